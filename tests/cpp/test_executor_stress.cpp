// 10,000 random enqueue / cancel / poll operations against one executor with a small KV pool
// (so preemption and prefix reuse happen), invalid requests, beam searches, requests scoring
// their prompts, and a backend that fails every step holding a poisoned prompt. Afterwards every
// request has exactly one final response, every completed output equals the model's (greedy
// output, beams, prompt scores), and every block is free.
#include "fake_backend.h"
#include "response_collector.h"

#include "runtime/executor.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>

using namespace kiln;

namespace
{
constexpr SizeType kVocab = 50;
constexpr TokenIdType kPoison = 49;
} // namespace

TEST(ExecutorStress, TenThousandOperations)
{
    ExecutorConfig config;
    config.maxBatchSize = 6;
    config.maxNumTokens = 24;
    config.maxSeqLen = 48;
    config.tokensPerBlock = 4;
    config.vocabSize = kVocab;
    auto backend = std::make_shared<test::FakeBackend>(24, config.tokensPerBlock, kVocab);
    // A poisoned prompt starts with kPoison; generated tokens never sit at position 0.
    backend->failWhen = [](StepInputs const& s) {
        for (SizeType t = 0; t < s.numTokens(); ++t)
        {
            if (s.positions[t] == 0 && s.inputIds[t] == kPoison)
            {
                return true;
            }
        }
        return false;
    };
    // A model step takes a few microseconds, like a tiny real one, so requests overlap.
    backend->onStep = [](StepInputs const&) { std::this_thread::sleep_for(std::chrono::microseconds(5)); };
    Executor executor(config, backend);
    test::ResponseCollector responses;

    std::mt19937 rng(20240611);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    std::vector<std::vector<TokenIdType>> const prefixes{{1, 2, 3, 4, 5, 6, 7, 8}, {9, 10, 11, 12}, {}};
    std::map<IdType, Request> requests;
    std::vector<IdType> ids;
    int numCancels = 0;
    for (int op = 0; op < 10000; ++op)
    {
        int const kind = uniform(0, 99);
        if (kind < 50)
        {
            Request r;
            r.inputTokenIds = prefixes[static_cast<std::size_t>(uniform(0, 2))];
            for (int i = uniform(1, 12); i > 0; --i)
            {
                r.inputTokenIds.push_back(uniform(0, kVocab - 2));
            }
            r.maxNewTokens = uniform(1, 16);
            r.samplingConfig.temperature = 0.0F;
            r.streaming = uniform(0, 1) == 1;
            if (uniform(0, 9) == 0)
            {
                r.endId = uniform(0, kVocab - 2);
            }
            if (uniform(0, 9) == 0)
            {
                r.stopWords = {{uniform(0, kVocab - 2)}, {uniform(0, kVocab - 2), uniform(0, kVocab - 2)}};
            }
            int const flavour = uniform(0, 99);
            if (flavour < 2)
            {
                r.inputTokenIds.insert(r.inputTokenIds.begin(), kPoison); // fails its step
            }
            else if (flavour < 4)
            {
                r.inputTokenIds.push_back(kVocab + 3); // rejected at once
            }
            else if (flavour < 12)
            {
                r.samplingConfig.beamWidth = uniform(2, 3);
                r.samplingConfig.earlyStopping = uniform(0, 2);
                r.streaming = false;
            }
            else if (flavour < 20)
            {
                r.promptLogProbs = uniform(0, 2);
            }
            IdType const id = executor.enqueueRequest(r);
            requests.emplace(id, r);
            ids.push_back(id);
        }
        else if (kind < 75 && !ids.empty())
        {
            // Mostly recent ids, so many cancels land on requests still in flight.
            int const back = uniform(1, std::min<int>(10, static_cast<int>(ids.size())));
            executor.cancelRequest(ids[ids.size() - static_cast<std::size_t>(back)]);
            ++numCancels;
        }
        else
        {
            responses.add(executor.awaitResponses(std::chrono::milliseconds(0)));
        }
    }
    responses.collect(executor, ids, std::chrono::seconds(120));

    int completed = 0;
    int cancelled = 0;
    int failed = 0;
    int beamSearches = 0;
    int scoredPrompts = 0;
    for (IdType const id : ids)
    {
        auto const& o = responses.outcomes[id];
        ASSERT_EQ(o.numFinals, 1) << "request " << id;
        ASSERT_FALSE(o.afterFinal) << "request " << id;
        Request const& r = requests.at(id);
        auto const expected = test::expectedGreedy(r, config.maxSeqLen, kVocab);
        if (r.samplingConfig.beamWidth > 1)
        {
            ++beamSearches;
            if (o.final.finishReason == FinishReason::kCancelled || o.final.finishReason == FinishReason::kError)
            {
                EXPECT_TRUE(o.tokens.empty() && o.beams.empty()) << "request " << id;
                (o.final.finishReason == FinishReason::kCancelled ? cancelled : failed) += 1;
                continue;
            }
            ++completed;
            auto const want = test::expectedBeams(kVocab, r, config.maxSeqLen);
            ASSERT_EQ(o.beams.size(), want.size()) << "request " << id;
            for (std::size_t b = 0; b < want.size(); ++b)
            {
                EXPECT_EQ(o.beams[b].tokens, want[b].tokens) << "request " << id << " beam " << b;
            }
            EXPECT_EQ(o.tokens, want.front().tokens) << "request " << id;
            continue;
        }
        if (r.promptLogProbs && o.final.finishReason != FinishReason::kCancelled
            && o.final.finishReason != FinishReason::kError)
        {
            ++scoredPrompts;
            ASSERT_EQ(o.promptLogProbs.size(), r.inputTokenIds.size() - 1) << "request " << id;
            for (std::size_t p = 0; p + 1 < r.inputTokenIds.size(); ++p)
            {
                std::vector<TokenIdType> const context(
                    r.inputTokenIds.begin(), r.inputTokenIds.begin() + static_cast<std::ptrdiff_t>(p) + 1);
                EXPECT_NEAR(o.promptLogProbs[p], test::fakeLogProb(kVocab, context, r.inputTokenIds[p + 1]), 1e-4)
                    << "request " << id << " position " << p;
            }
        }
        switch (o.final.finishReason)
        {
        case FinishReason::kCancelled: ++cancelled; break;
        case FinishReason::kError:
            ++failed;
            EXPECT_TRUE(o.final.errorMessage.find("injected failure") != std::string::npos
                || o.final.errorMessage.rfind("bad request: input_token_ids", 0) == 0)
                << o.final.errorMessage;
            break;
        default:
            ++completed;
            EXPECT_EQ(o.final.finishReason, expected.reason) << "request " << id;
            EXPECT_EQ(o.tokens, expected.tokens) << "request " << id;
            continue;
        }
        // Cancelled or failed part-way: what was sent is a prefix of the full output.
        ASSERT_LE(o.tokens.size(), expected.tokens.size());
        EXPECT_TRUE(std::equal(o.tokens.begin(), o.tokens.end(), expected.tokens.begin())) << "request " << id;
    }
    auto const kv = executor.getKvCacheStats();
    EXPECT_EQ(kv.usedBlocks, 0);
    EXPECT_EQ(kv.freeBlocks, kv.totalBlocks);
    auto const stats = executor.getLatestIterationStats().value();
    EXPECT_GT(completed, 1000);
    EXPECT_GT(cancelled, 100);
    EXPECT_GT(failed, 50);
    EXPECT_GT(stats.totalPreemptions, 0);
    EXPECT_GT(beamSearches, 100);
    EXPECT_GT(scoredPrompts, 50);
    EXPECT_GT(stats.totalReusedTokens, 0);
    std::cout << "requests " << ids.size() << ", completed " << completed << ", cancelled " << cancelled
              << ", failed " << failed << " (beam searches " << beamSearches << ", scored prompts " << scoredPrompts
              << "), cancel calls " << numCancels << ", steps " << stats.iteration + 1
              << ", preemptions " << stats.totalPreemptions << ", reused tokens " << stats.totalReusedTokens << "\n";
}
