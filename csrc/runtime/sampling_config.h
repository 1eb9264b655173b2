#pragma once

#include "runtime/types.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kiln
{

/// @brief The most beams a beam search may ask for (it reads each beam's 2 x beam_width most
/// likely tokens, as many as a request's top log-probabilities).
inline constexpr SizeType kMaxBeamWidth = 10;

/// @brief How one request picks its tokens. Defaults are "off", with temperature 1 (plain
/// sampling, as in vLLM); temperature 0 means greedy.
struct SamplingConfig
{
    float temperature = 1.0F;      ///< 0 = greedy (argmax, lowest id on ties)
    SizeType topK = 0;             ///< keep the k highest logits (ties at the k-th kept); 0 = off
    float topP = 1.0F;             ///< keep the smallest set with probability >= top_p; 1 = off
    float minP = 0.0F;             ///< drop tokens below min_p * max probability; 0 = off
    float repetitionPenalty = 1.0F; ///< HF: divide positive / multiply negative logits of seen tokens
    float presencePenalty = 0.0F;  ///< OpenAI: subtract once per generated token id
    float frequencyPenalty = 0.0F; ///< OpenAI: subtract per occurrence among generated tokens
    std::optional<std::uint64_t> seed; ///< per-request generator; unset = drawn by the executor
    /// Until this many tokens are generated, end_id and the one-token stop words are never
    /// picked and no stop word ends the request (vLLM's and TensorRT-LLM's min_tokens); 0 = off
    SizeType minTokens = 0;
    /// (token, bias) pairs added to the model's logits before anything else (OpenAI's
    /// logit_bias; each in [-100, 100])
    std::vector<std::pair<TokenIdType, float>> logitBias;
    /// When not empty, the only tokens that may be picked (vLLM's allowed_token_ids)
    std::vector<TokenIdType> allowedTokenIds;
    /// Beams of a beam search (TensorRT-LLM's beam_width); 1 = none. A beam search ranks by the
    /// raw log-probabilities, so it needs plain greedy decoding otherwise (runtime/beam_search.h)
    SizeType beamWidth = 1;
    /// A finished hypothesis scores its cumulative log-probability / length^length_penalty
    float lengthPenalty = 1.0F;
    /// When a beam search ends: 1 as soon as beam_width hypotheses are finished, 0 once no
    /// running beam can beat them (a heuristic), 2 never before the length limit (EarlyStopping)
    SizeType earlyStopping = 1;

    /// @brief What is wrong with these values (one line), or nullopt when they are valid.
    [[nodiscard]] std::optional<std::string> validate() const;
    /// @brief Whether decoding is greedy.
    [[nodiscard]] bool isGreedy() const
    {
        return temperature == 0.0F;
    }
    /// @brief Greedy with no penalty, bias or allowed set: the token is the argmax of the raw logits, which a
    /// backend may pick itself.
    [[nodiscard]] bool isPlainGreedy() const
    {
        return isGreedy() && repetitionPenalty == 1.0F && presencePenalty == 0.0F && frequencyPenalty == 0.0F
            && logitBias.empty() && allowedTokenIds.empty();
    }
};

} // namespace kiln
