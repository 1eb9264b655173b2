#pragma once

#include "runtime/sampling_config.h"
#include "runtime/types.h"

#include <random>
#include <vector>

namespace kiln
{

/// @brief A picked token and its log-probability under the processed distribution, and when
/// asked for, the most likely tokens under it (most likely first, lowest id on ties; tokens the
/// processing masked are left out).
struct SampleResult
{
    TokenIdType token = 0;
    float logProb = 0.0F;
    std::vector<TokenLogProb> top;
    SizeType rank = 0; ///< from score(): 1 + the tokens more likely than this one
};

/// @brief Applies the HF repetition penalty (over prompt and output tokens) and the OpenAI
/// presence/frequency penalties (over output tokens) to `logits` in place.
void applyPenalties(std::vector<float>& logits, SamplingConfig const& config, std::vector<TokenIdType> const& tokens,
    SizeType numPromptTokens);

/// @brief Divides by the temperature, then masks (to -inf) by top-k, top-p and min-p in that
/// order, as HF's warpers do. Requires a non-greedy config.
void applyTemperatureAndFilters(std::vector<float>& logits, SamplingConfig const& config);

/// @brief Log-softmax of `logits` at `token`.
[[nodiscard]] float logSoftmaxAt(std::vector<float> const& logits, TokenIdType token);

/// @brief Picks next tokens on the CPU from one row of logits at a time.
///
/// The logit bias is added first, then the penalties applied, then the held-back tokens and
/// those outside the allowed set masked. Greedy takes the argmax of the result (lowest id on
/// ties, like torch.argmax).
/// Otherwise one uniform draw from the request's own generator picks from the processed
/// distribution, so a seeded request samples the same tokens however it is batched.
class Sampler
{
public:
    /// @brief A sampler for rows of `vocabSize` logits.
    explicit Sampler(SizeType vocabSize);

    /// @brief Logits per row.
    [[nodiscard]] SizeType vocabSize() const
    {
        return mVocabSize;
    }

    /// @brief Picks the next token of a sequence whose tokens (prompt first) are `tokens`,
    /// never one of `heldBack` (masked after the penalties; the log-probability is under the
    /// distribution without them) and, when `only` is not empty, one of those, with the `numTop`
    /// most likely tokens. Throws
    /// std::runtime_error when the row holds NaN or no finite value.
    [[nodiscard]] SampleResult sample(float const* logits, SamplingConfig const& config,
        std::vector<TokenIdType> const& tokens, SizeType numPromptTokens, std::mt19937_64& rng,
        std::vector<TokenIdType> const& heldBack = {}, SizeType numTop = 0,
        std::vector<TokenIdType> const& only = {});

    /// @brief `token`'s log-probability and rank under the raw distribution of `logits` (no
    /// processing), with the `numTop` most likely tokens there: a prompt token's score. Throws
    /// std::runtime_error when the row holds NaN or no finite value.
    [[nodiscard]] SampleResult score(float const* logits, TokenIdType token, SizeType numTop);

private:
    /// Appends the numTop most likely tokens of mScratch to result.top, under the distribution
    /// whose largest logit is maxLogit and log-sum-exp relative to it logSum.
    void appendTop(SampleResult& result, SizeType numTop, float maxLogit, double logSum);

    /// The token and its log-probability; leaves the processed logits in mScratch.
    [[nodiscard]] SampleResult pick(float const* logits, SamplingConfig const& config,
        std::vector<TokenIdType> const& tokens, SizeType numPromptTokens, std::mt19937_64& rng,
        std::vector<TokenIdType> const& heldBack, std::vector<TokenIdType> const& only);

    /// Masks every token of mScratch but those of `keep`.
    void keepOnly(std::vector<TokenIdType> const& keep);

    SizeType mVocabSize;
    std::vector<float> mScratch;
    std::vector<float> mAllowed; ///< the allowed tokens' logits, the others masked
    std::vector<TokenIdType> mOrder; ///< token ids, ordered for the most likely ones
};

} // namespace kiln
