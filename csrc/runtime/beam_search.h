#pragma once

#include "runtime/finish_reason.h"
#include "runtime/types.h"

#include <vector>

namespace kiln
{

/// @brief When a beam search ends (TensorRT-LLM's early_stopping; HF's True, False, "never").
enum class EarlyStopping
{
    kHeuristic = 0, ///< once no running beam can still beat the worst finished one (HF False)
    kWhenFull = 1,  ///< as soon as beam-width hypotheses are finished (HF True, the default)
    kNever = 2,     ///< only at the length limit, or when a positive length penalty says so
};

/// @brief One hypothesis of a beam search: its generated tokens and scores.
struct BeamHypothesis
{
    std::vector<TokenIdType> tokens; ///< generated, the end id or stop word included
    std::vector<float> logProbs;     ///< each token's log-probability
    float score = 0.0F;      ///< finished: cumLogProb / length^length_penalty; running: cumLogProb
    float cumLogProb = 0.0F; ///< the sum of its tokens' log-probabilities
    bool finished = false;
    /// How it ends: on the end id, a stop word or the length limit (kNotFinished: it does not)
    FinishReason reason = FinishReason::kNotFinished;
};

/// @brief Beam search over one prompt, step by step, as HuggingFace transformers' beam search
/// decides it (generation/utils.py `_beam_search`): each step takes the top 2W continuations of
/// the W running beams by cumulative log-probability; those that end (end id, a stop word, the
/// length limit) and rank in the top W become finished hypotheses, scored by length; the best W
/// that do not end run on. The caller computes each running beam's next-token distribution.
class BeamSearch
{
public:
    /// @brief A search of `beamWidth` beams after a prompt of `numPromptTokens` tokens, ending
    /// by `maxLength` tokens in all (prompt included) at the latest.
    BeamSearch(SizeType beamWidth, SizeType numPromptTokens, SizeType maxLength, float lengthPenalty,
        EarlyStopping earlyStopping, TokenIdType endId, std::vector<std::vector<TokenIdType>> stopWords);

    /// @brief How many of each running beam's most likely next tokens step() needs (2W).
    [[nodiscard]] SizeType numCandidates() const
    {
        return 2 * mWidth;
    }

    /// @brief The beams whose next-token distributions the next step needs: before the first
    /// step the prompt alone (one beam, no tokens), then W.
    [[nodiscard]] std::vector<BeamHypothesis> const& running() const
    {
        return mRunning;
    }

    /// @brief One step. `candidates[b]`: running beam b's numCandidates() most likely next
    /// tokens with their log-probabilities, most likely first. Returns whether the search goes on.
    bool step(std::vector<std::vector<TokenLogProb>> const& candidates);

    /// @brief The W best hypotheses so far, best first (all finished once step() returned false).
    [[nodiscard]] std::vector<BeamHypothesis> const& hypotheses() const
    {
        return mFinished;
    }

private:
    /// How generated tokens `tokens` end the hypothesis: end id, then stop word, then length
    /// limit, as stopReason orders them; kNotFinished when they do not.
    [[nodiscard]] FinishReason endOf(std::vector<TokenIdType> const& tokens) const;

    SizeType mWidth;
    SizeType mNumPromptTokens;
    SizeType mMaxLength;
    float mLengthPenalty;
    EarlyStopping mEarlyStopping;
    TokenIdType mEndId;
    std::vector<std::vector<TokenIdType>> mStopWords;
    std::vector<BeamHypothesis> mRunning;
    std::vector<BeamHypothesis> mFinished;
    bool mImprovable = true; ///< whether a running beam may still beat the finished ones
};

} // namespace kiln
