#pragma once

// Gathers an executor's responses per request and checks the one-final-response contract.

#include "runtime/executor.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <vector>

namespace kiln::test
{

/// Everything one request received.
struct Outcome
{
    std::vector<TokenIdType> tokens;
    std::vector<float> logProbs;
    std::vector<std::vector<TokenLogProb>> topLogProbs;
    std::vector<float> promptLogProbs;
    std::vector<SizeType> promptRanks;
    std::vector<std::vector<TokenLogProb>> promptTopLogProbs;
    std::vector<BeamHypothesis> beams;
    int numWithPrompt = 0; ///< responses that carried prompt log-probabilities
    int numResponses = 0;
    int numFinals = 0;
    bool afterFinal = false; ///< a response arrived after the final one
    Response final;
};

class ResponseCollector
{
public:
    void add(std::vector<Response> const& responses)
    {
        for (Response const& r : responses)
        {
            Outcome& o = outcomes[r.requestId];
            o.afterFinal = o.afterFinal || o.numFinals > 0;
            o.tokens.insert(o.tokens.end(), r.outputTokenIds.begin(), r.outputTokenIds.end());
            o.logProbs.insert(o.logProbs.end(), r.logProbs.begin(), r.logProbs.end());
            o.topLogProbs.insert(o.topLogProbs.end(), r.topLogProbs.begin(), r.topLogProbs.end());
            if (!r.promptLogProbs.empty())
            {
                ++o.numWithPrompt;
                o.promptLogProbs = r.promptLogProbs;
                o.promptRanks = r.promptRanks;
                o.promptTopLogProbs = r.promptTopLogProbs;
            }
            ++o.numResponses;
            if (r.isFinal)
            {
                ++o.numFinals;
                o.final = r;
                o.beams = r.beams;
            }
        }
    }

    [[nodiscard]] bool answered(IdType id) const
    {
        auto const it = outcomes.find(id);
        return it != outcomes.end() && it->second.numFinals > 0;
    }

    /// Awaits until every id in `ids` has its final response, or fails after `limit`.
    void collect(Executor& executor, std::vector<IdType> const& ids, std::chrono::seconds limit = std::chrono::seconds(20))
    {
        auto const deadline = std::chrono::steady_clock::now() + limit;
        auto pending = [&] {
            return std::any_of(ids.begin(), ids.end(), [&](IdType id) { return !answered(id); });
        };
        while (pending())
        {
            ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "requests still unanswered";
            add(executor.awaitResponses(std::chrono::milliseconds(100)));
        }
    }

    std::map<IdType, Outcome> outcomes;
};

} // namespace kiln::test
