#include "runtime/beam_search.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace kiln
{
namespace
{
/// What the search adds to a score to rule a hypothesis out (as transformers does).
constexpr float kRuledOut = -1.0e9F;

/// Indices of `values`, highest first; equal values keep their order.
std::vector<std::size_t> descending(std::vector<float> const& values)
{
    std::vector<std::size_t> order(values.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] > values[b]; });
    return order;
}
} // namespace

BeamSearch::BeamSearch(SizeType beamWidth, SizeType numPromptTokens, SizeType maxLength, float lengthPenalty,
    EarlyStopping earlyStopping, TokenIdType endId, std::vector<std::vector<TokenIdType>> stopWords)
    : mWidth(beamWidth)
    , mNumPromptTokens(numPromptTokens)
    , mMaxLength(maxLength)
    , mLengthPenalty(lengthPenalty)
    , mEarlyStopping(earlyStopping)
    , mEndId(endId)
    , mStopWords(std::move(stopWords))
    , mRunning(1)
    , mFinished(static_cast<std::size_t>(beamWidth), BeamHypothesis{{}, {}, kRuledOut, 0.0F, false})
{
    if (beamWidth < 1 || maxLength <= numPromptTokens)
    {
        throw std::invalid_argument("a beam search needs at least one beam and room for one token, got width "
            + std::to_string(beamWidth) + " and " + std::to_string(maxLength - numPromptTokens) + " tokens");
    }
}

FinishReason BeamSearch::endOf(std::vector<TokenIdType> const& tokens) const
{
    if (mEndId >= 0 && !tokens.empty() && tokens.back() == mEndId)
    {
        return FinishReason::kEndId;
    }
    if (std::any_of(mStopWords.begin(), mStopWords.end(), [&](std::vector<TokenIdType> const& word) {
            return !word.empty() && word.size() <= tokens.size()
                && std::equal(word.rbegin(), word.rend(), tokens.rbegin());
        }))
    {
        return FinishReason::kStopWords;
    }
    return mNumPromptTokens + static_cast<SizeType>(tokens.size()) >= mMaxLength ? FinishReason::kLength
                                                                                 : FinishReason::kNotFinished;
}

bool BeamSearch::step(std::vector<std::vector<TokenLogProb>> const& candidates)
{
    if (candidates.size() != mRunning.size())
    {
        throw std::invalid_argument("a beam search step takes the candidates of " + std::to_string(mRunning.size())
            + " beams, got " + std::to_string(candidates.size()));
    }
    auto const k = static_cast<std::size_t>(numCandidates());
    auto const width = static_cast<std::size_t>(mWidth);
    SizeType const length = mNumPromptTokens + static_cast<SizeType>(mRunning.front().tokens.size());

    // The top 2W continuations of all beams by cumulative log-probability.
    std::vector<BeamHypothesis> all;
    std::vector<float> scores;
    for (std::size_t b = 0; b < candidates.size(); ++b)
    {
        for (std::size_t r = 0; r < std::min(k, candidates[b].size()); ++r)
        {
            BeamHypothesis h{mRunning[b].tokens, mRunning[b].logProbs, mRunning[b].score + candidates[b][r].logProb,
                0.0F, false};
            h.tokens.push_back(candidates[b][r].token);
            h.logProbs.push_back(candidates[b][r].logProb);
            h.cumLogProb = h.score;
            scores.push_back(h.score);
            all.push_back(std::move(h));
        }
    }
    std::vector<BeamHypothesis> top;
    for (std::size_t i : descending(scores))
    {
        if (top.size() == k)
        {
            break;
        }
        all[i].reason = endOf(all[i].tokens);
        top.push_back(std::move(all[i]));
    }
    auto const ends = [](BeamHypothesis const& h) { return h.reason != FinishReason::kNotFinished; };

    // The best W that do not end run on.
    std::vector<float> running(top.size());
    for (std::size_t i = 0; i < top.size(); ++i)
    {
        running[i] = top[i].score + (ends(top[i]) ? kRuledOut : 0.0F);
    }
    std::vector<BeamHypothesis> next;
    for (std::size_t i : descending(running))
    {
        if (next.size() == width)
        {
            break;
        }
        next.push_back(BeamHypothesis{top[i].tokens, top[i].logProbs, running[i], top[i].cumLogProb, false});
    }

    // Those that end among the top W join the finished ones, scored by length.
    bool const full = std::all_of(mFinished.begin(), mFinished.end(), [](BeamHypothesis const& h) { return h.finished; });
    auto const norm = static_cast<float>(std::pow(static_cast<double>(length + 1 - mNumPromptTokens), mLengthPenalty));
    std::vector<BeamHypothesis> merged = mFinished;
    for (std::size_t i = 0; i < top.size(); ++i)
    {
        bool const justFinished = ends(top[i]) && i < width;
        float score = top[i].score / norm;
        score += full && mEarlyStopping == EarlyStopping::kWhenFull ? kRuledOut : 0.0F;
        score += mImprovable ? 0.0F : kRuledOut;
        score += justFinished ? 0.0F : kRuledOut;
        merged.push_back(BeamHypothesis{top[i].tokens, top[i].logProbs, score, top[i].cumLogProb, justFinished,
            justFinished ? top[i].reason : FinishReason::kNotFinished});
    }
    std::vector<float> mergedScores(merged.size());
    std::transform(merged.begin(), merged.end(), mergedScores.begin(), [](BeamHypothesis const& h) { return h.score; });
    std::vector<BeamHypothesis> finished;
    for (std::size_t i : descending(mergedScores))
    {
        if (finished.size() == width)
        {
            break;
        }
        finished.push_back(std::move(merged[i]));
    }
    mFinished = std::move(finished);
    mRunning = std::move(next);

    // Whether a running beam could still beat the worst finished hypothesis.
    SizeType const best = mEarlyStopping == EarlyStopping::kNever && mLengthPenalty > 0.0F
        ? mMaxLength - mNumPromptTokens
        : length + 1 - mNumPromptTokens;
    float const bestPossible
        = mRunning.front().score / static_cast<float>(std::pow(static_cast<double>(best), mLengthPenalty));
    float worst = mFinished.front().score;
    for (BeamHypothesis const& h : mFinished)
    {
        worst = std::min(worst, h.score);
    }
    mImprovable = mImprovable && std::any_of(mFinished.begin(), mFinished.end(), [&](BeamHypothesis const& h) {
        return bestPossible > (h.finished ? worst : kRuledOut);
    });
    bool const allFinished = std::all_of(mFinished.begin(), mFinished.end(), [](BeamHypothesis const& h) { return h.finished; });
    bool const open = !(allFinished && mEarlyStopping == EarlyStopping::kWhenFull);
    bool const canContinue = !std::all_of(top.begin(), top.end(), ends);
    return mImprovable && open && canContinue;
}

} // namespace kiln
