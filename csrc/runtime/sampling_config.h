#pragma once

#include "runtime/types.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kiln
{

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
