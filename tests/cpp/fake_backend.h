#pragma once

// A deterministic stand-in for a model: it keeps the token of every KV slot it is given, reads
// each sequence's whole context back through its block table, and favours one next token that
// depends on that context. A wrong block table, slot mapping or reused block therefore changes
// the generated tokens.

#include "runtime/backend.h"
#include "runtime/beam_search.h"
#include "runtime/request.h"
#include "runtime/response.h"
#include "runtime/sampler.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln::test
{

/// The token the fake model favours after `context`.
inline TokenIdType favouredToken(std::vector<TokenIdType> const& context, SizeType vocabSize)
{
    std::int64_t sum = 0;
    for (TokenIdType const t : context)
    {
        sum += t;
    }
    auto const last = static_cast<std::int64_t>(context.back());
    auto const position = static_cast<std::int64_t>(context.size()) - 1;
    return static_cast<TokenIdType>((last * 7 + position + sum % 13) % vocabSize);
}

/// The fake model's logit of token `v` when it favours `favoured`.
inline float fakeLogit(TokenIdType v, TokenIdType favoured)
{
    float const noise = static_cast<float>((v * 31 + favoured * 17) % 23) * 0.1F;
    return v == favoured ? 5.0F + noise : noise;
}

/// The fake model's log-softmax of token `v` after `context`.
inline double fakeLogProb(SizeType vocabSize, std::vector<TokenIdType> const& context, TokenIdType v)
{
    TokenIdType const fav = favouredToken(context, vocabSize);
    double z = 0.0;
    for (TokenIdType u = 0; u < vocabSize; ++u)
    {
        z += std::exp(static_cast<double>(fakeLogit(u, fav)));
    }
    return fakeLogit(v, fav) - std::log(z);
}

/// The fake model's beam search for `r` run directly (BeamSearch fed the scores of the fake
/// logits, as the executor's sampler scores them).
inline std::vector<BeamHypothesis> expectedBeams(SizeType vocabSize, Request const& r, SizeType maxSeqLen = 64)
{
    Sampler sampler(vocabSize);
    auto const prompt = static_cast<SizeType>(r.inputTokenIds.size());
    BeamSearch search(r.samplingConfig.beamWidth, prompt, std::min(prompt + r.maxNewTokens, maxSeqLen),
        r.samplingConfig.lengthPenalty, static_cast<EarlyStopping>(r.samplingConfig.earlyStopping), r.endId,
        r.stopWords);
    while (true)
    {
        std::vector<std::vector<TokenLogProb>> candidates;
        for (BeamHypothesis const& beam : search.running())
        {
            std::vector<TokenIdType> context = r.inputTokenIds;
            context.insert(context.end(), beam.tokens.begin(), beam.tokens.end());
            TokenIdType const fav = favouredToken(context, vocabSize);
            std::vector<float> logits;
            for (TokenIdType v = 0; v < vocabSize; ++v)
            {
                logits.push_back(fakeLogit(v, fav));
            }
            candidates.push_back(sampler.score(logits.data(), 0, search.numCandidates()).top);
        }
        if (!search.step(candidates))
        {
            return search.hypotheses();
        }
    }
}

/// What greedy decoding of the fake model yields for `request`, with the executor's stop rules
/// (min_tokens: end_id and one-token stop words held back, no stop before it).
struct Expected
{
    std::vector<TokenIdType> tokens;
    FinishReason reason = FinishReason::kLength;
};

inline Expected expectedGreedy(Request const& request, SizeType maxSeqLen, SizeType vocabSize)
{
    Expected e;
    std::vector<TokenIdType> context = request.inputTokenIds;
    while (true)
    {
        TokenIdType const favoured = favouredToken(context, vocabSize);
        bool const early = static_cast<SizeType>(e.tokens.size()) < request.samplingConfig.minTokens;
        auto const bad = [&](TokenIdType v) { // v would complete a bad word among the generated tokens
            for (auto const& word : request.badWords)
            {
                std::vector<TokenIdType> tail(e.tokens);
                tail.push_back(v);
                if (word.size() <= tail.size() && std::equal(word.rbegin(), word.rend(), tail.rbegin()))
                {
                    return true;
                }
            }
            return false;
        };
        auto const held = [&](TokenIdType v) {
            return bad(v)
                || (early
                    && (v == request.endId
                        || std::any_of(request.stopWords.begin(), request.stopWords.end(),
                            [v](auto const& word) { return word.size() == 1 && word[0] == v; })));
        };
        TokenIdType next = -1;
        for (TokenIdType v = 0; v < vocabSize; ++v)
        {
            if (!held(v) && (next < 0 || fakeLogit(v, favoured) > fakeLogit(next, favoured)))
            {
                next = v;
            }
        }
        e.tokens.push_back(next);
        context.push_back(next);
        bool const mayStop = static_cast<SizeType>(e.tokens.size()) >= request.samplingConfig.minTokens;
        if (mayStop && next == request.endId)
        {
            e.reason = FinishReason::kEndId;
            return e;
        }
        for (auto const& word : request.stopWords)
        {
            if (mayStop && word.size() <= e.tokens.size() && std::equal(word.rbegin(), word.rend(), e.tokens.rbegin()))
            {
                e.reason = FinishReason::kStopWords;
                return e;
            }
        }
        if (static_cast<SizeType>(e.tokens.size()) >= request.maxNewTokens
            || static_cast<SizeType>(context.size()) >= maxSeqLen)
        {
            return e;
        }
    }
}

class FakeBackend final : public Backend
{
public:
    FakeBackend(SizeType numBlocks, SizeType tokensPerBlock, SizeType vocabSize)
        : mNumBlocks(numBlocks)
        , mTokensPerBlock(tokensPerBlock)
        , mVocabSize(vocabSize)
        , mSlots(static_cast<std::size_t>(numBlocks) * tokensPerBlock, -1)
    {
    }

    [[nodiscard]] SizeType numBlocks() const override
    {
        return mNumBlocks;
    }

    [[nodiscard]] StepOutput forward(StepInputs const& step) override
    {
        std::int64_t const index = mSteps++;
        if (onStep)
        {
            onStep(step);
        }
        if (failWhen && failWhen(step))
        {
            throw std::runtime_error("injected failure in step " + std::to_string(index));
        }
        check(step);
        for (SizeType t = 0; t < step.numTokens(); ++t)
        {
            mSlots[static_cast<std::size_t>(step.slotMapping[t])] = step.inputIds[t];
        }
        std::vector<float> logits;
        for (SizeType b = 0; b < step.numSequences; ++b)
        {
            std::vector<TokenIdType> context;
            for (SizeType pos = 0; pos < step.contextLens[b]; ++pos)
            {
                BlockIdType const block = step.blockTables[static_cast<std::size_t>(b) * step.maxBlocksPerSeq + pos / mTokensPerBlock];
                context.push_back(mSlots[static_cast<std::size_t>(block) * mTokensPerBlock + pos % mTokensPerBlock]);
            }
            TokenIdType const favoured = favouredToken(context, mVocabSize);
            bool const nan = nanRow && nanRow(step, b);
            for (TokenIdType v = 0; v < mVocabSize; ++v)
            {
                logits.push_back(nan ? std::nanf("") : fakeLogit(v, favoured));
            }
        }
        if (!pickGreedy)
        {
            return StepOutput{std::move(logits), {}, {}};
        }
        // As the GPU plan executor does: greedy picks for every row, logits for logitRows only.
        StepOutput out;
        auto const vocab = static_cast<std::size_t>(mVocabSize);
        for (SizeType b = 0; b < step.numSequences; ++b)
        {
            float const* row = logits.data() + static_cast<std::size_t>(b) * vocab;
            auto const best = static_cast<TokenIdType>(std::max_element(row, row + vocab) - row);
            double sum = 0.0;
            for (std::size_t v = 0; v < vocab; ++v)
            {
                sum += std::exp(static_cast<double>(row[v]) - row[best]);
            }
            out.tokens.push_back(poisonRow && *poisonRow == b ? -1 : best);
            out.logProbs.push_back(static_cast<float>(-std::log(sum)));
        }
        std::vector<SizeType> all(static_cast<std::size_t>(step.numSequences));
        std::iota(all.begin(), all.end(), 0);
        for (SizeType b : step.logitRows.value_or(all))
        {
            float const* row = logits.data() + static_cast<std::size_t>(b) * vocab;
            out.logits.insert(out.logits.end(), row, row + vocab);
        }
        lastLogitRows = step.logitRows.value_or(all);
        return out;
    }

    /// Pick greedy tokens here, returning logits only for the rows the executor asks for.
    bool pickGreedy = false;
    /// With pickGreedy: the row whose pick is marked bad (-1), as for NaN logits.
    std::optional<SizeType> poisonRow;
    /// The logit rows of the last step.
    std::vector<SizeType> lastLogitRows;

    /// Steps run so far (failed ones included).
    [[nodiscard]] std::int64_t numSteps() const
    {
        return mSteps.load();
    }

    /// When set, called first in every step (to pace or hold the executor).
    std::function<void(StepInputs const&)> onStep;
    /// When set, the rows (sequence index) of a step for which it returns true get NaN logits.
    std::function<bool(StepInputs const&, SizeType)> nanRow;
    /// When set, forward throws in the steps for which it returns true.
    std::function<bool(StepInputs const&)> failWhen;

private:
    void check(StepInputs const& step) const
    {
        auto require = [](bool ok, char const* what) {
            if (!ok)
            {
                throw std::logic_error(std::string("step ABI violated: ") + what);
            }
        };
        auto const b = static_cast<std::size_t>(step.numSequences);
        require(step.positions.size() == step.inputIds.size() && step.slotMapping.size() == step.inputIds.size(), "[T] sizes");
        require(step.contextLens.size() == b && step.lastTokenIndex.size() == b && step.queryStart.size() == b + 1, "[B] sizes");
        require(step.blockTables.size() == b * step.maxBlocksPerSeq, "block_tables size");
        require(step.queryStart.front() == 0 && step.queryStart.back() == step.numTokens(), "query_start ends");
        for (std::size_t i = 0; i < b; ++i)
        {
            SizeType const begin = step.queryStart[i];
            SizeType const end = step.queryStart[i + 1];
            require(begin < end && step.lastTokenIndex[i] == end - 1, "query_start monotone");
            for (SizeType t = begin; t < end; ++t)
            {
                SizeType const pos = step.positions[t];
                require(pos == step.contextLens[i] - (end - t), "positions end at context_len");
                require(step.inputIds[t] >= 0 && step.inputIds[t] < mVocabSize, "input id in vocab");
                BlockIdType const block = step.blockTables[i * step.maxBlocksPerSeq + pos / mTokensPerBlock];
                require(block >= 0 && block < mNumBlocks, "block id in pool");
                require(step.slotMapping[t] == static_cast<std::int64_t>(block) * mTokensPerBlock + pos % mTokensPerBlock,
                    "slot_mapping matches block_tables");
            }
        }
    }

    SizeType mNumBlocks;
    SizeType mTokensPerBlock;
    SizeType mVocabSize;
    std::vector<TokenIdType> mSlots;
    std::atomic<std::int64_t> mSteps{0};
};

} // namespace kiln::test
