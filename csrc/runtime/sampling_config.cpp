#include "runtime/sampling_config.h"

#include <cmath>
#include <sstream>

namespace kiln
{
namespace
{
std::string describe(char const* name, float value, char const* expected)
{
    std::ostringstream os;
    os << name << " is " << value << " but must be " << expected;
    return os.str();
}
} // namespace

std::optional<std::string> SamplingConfig::validate() const
{
    if (!std::isfinite(temperature) || temperature < 0.0F)
    {
        return describe("temperature", temperature, "a finite value >= 0 (0 = greedy)");
    }
    if (topK < 0)
    {
        return "top_k is " + std::to_string(topK) + " but must be >= 0 (0 = off)";
    }
    if (!(topP > 0.0F && topP <= 1.0F))
    {
        return describe("top_p", topP, "in (0, 1] (1 = off)");
    }
    if (!(minP >= 0.0F && minP <= 1.0F))
    {
        return describe("min_p", minP, "in [0, 1] (0 = off)");
    }
    if (!std::isfinite(repetitionPenalty) || repetitionPenalty <= 0.0F)
    {
        return describe("repetition_penalty", repetitionPenalty, "a finite value > 0 (1 = off)");
    }
    if (!(presencePenalty >= -2.0F && presencePenalty <= 2.0F))
    {
        return describe("presence_penalty", presencePenalty, "in [-2, 2] (0 = off)");
    }
    if (!(frequencyPenalty >= -2.0F && frequencyPenalty <= 2.0F))
    {
        return describe("frequency_penalty", frequencyPenalty, "in [-2, 2] (0 = off)");
    }
    if (minTokens < 0)
    {
        return "min_tokens is " + std::to_string(minTokens) + " but must be >= 0 (0 = off)";
    }
    for (auto const& [token, bias] : logitBias)
    {
        if (!(bias >= -100.0F && bias <= 100.0F))
        {
            std::string const name = "logit_bias[" + std::to_string(token) + "]";
            return describe(name.c_str(), bias, "in [-100, 100]");
        }
    }
    if (beamWidth < 1 || beamWidth > kMaxBeamWidth)
    {
        return "beam_width is " + std::to_string(beamWidth) + " but must be in [1, " + std::to_string(kMaxBeamWidth)
            + "] (1 = no beam search)";
    }
    if (!std::isfinite(lengthPenalty))
    {
        return describe("length_penalty", lengthPenalty, "finite (1 = scores divided by the length)");
    }
    if (earlyStopping < 0 || earlyStopping > 2)
    {
        return "early_stopping is " + std::to_string(earlyStopping)
            + " but must be 0 (heuristic), 1 (once beam_width hypotheses are finished) or 2 (never)";
    }
    return std::nullopt;
}

} // namespace kiln
