#include "fake_backend.h"
#include "response_collector.h"

#include "runtime/beam_search.h"
#include "runtime/executor.h"
#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>

using namespace kiln;
using kiln::test::ResponseCollector;
using std::chrono::milliseconds;

namespace
{
constexpr SizeType kVocab = 64;
constexpr SizeType kTpb = 4;

ExecutorConfig smallConfig(SizeType maxSeqLen = 64)
{
    ExecutorConfig c;
    c.maxBatchSize = 4;
    c.maxNumTokens = 16;
    c.maxSeqLen = maxSeqLen;
    c.tokensPerBlock = kTpb;
    c.vocabSize = kVocab;
    return c;
}

Request greedy(std::vector<TokenIdType> prompt, SizeType maxNew)
{
    Request r;
    r.inputTokenIds = std::move(prompt);
    r.maxNewTokens = maxNew;
    r.samplingConfig.temperature = 0.0F;
    return r;
}

struct Fixture
{
    explicit Fixture(SizeType numBlocks = 32, ExecutorConfig const& config = smallConfig())
        : backend(std::make_shared<test::FakeBackend>(numBlocks, config.tokensPerBlock, config.vocabSize))
        , executor(config, backend)
    {
    }

    std::shared_ptr<test::FakeBackend> backend;
    Executor executor;
    ResponseCollector responses;
};

/// smallConfig with room for 6 sequences and 64 tokens a step (a small pool then preempts).
ExecutorConfig wideConfig()
{
    ExecutorConfig c = smallConfig(64);
    c.maxBatchSize = 6;
    c.maxNumTokens = 64;
    return c;
}

/// Holds the steps of `f`'s backend after its first `after` until `go`: with none, so the requests
/// enqueued meanwhile arrive at once; with some, so a test acts between two steps of a request.
void holdSteps(Fixture& f, std::atomic<bool> const& go, std::int64_t after = 0)
{
    auto* backend = f.backend.get();
    f.backend->onStep = [&go, backend, after](StepInputs const&) {
        while (backend->numSteps() > after && !go)
        {
            std::this_thread::sleep_for(milliseconds(1));
        }
    };
}

/// Waits until `f`'s backend has begun `steps` steps.
void waitForSteps(Fixture& f, std::int64_t steps)
{
    while (f.backend->numSteps() < steps)
    {
        std::this_thread::sleep_for(milliseconds(1));
    }
}

/// Runs `requests` on a fresh executor twice, first sampling every token on the host, then with
/// the backend picking greedy tokens as the GPU plan executor does, and hands `check` each run's
/// fixture, the requests' ids (in order) and which of the two it was.
template <typename Check>
void onEitherPickPath(std::vector<Request> const& requests, Check const& check)
{
    for (bool const pickOnBackend : {false, true})
    {
        Fixture f;
        f.backend->pickGreedy = pickOnBackend;
        std::vector<IdType> ids;
        for (Request const& r : requests)
        {
            ids.push_back(f.executor.enqueueRequest(r));
        }
        f.responses.collect(f.executor, ids);
        check(f, ids, pickOnBackend);
    }
}
} // namespace

TEST(Executor, GreedyOutputsFollowTheModel)
{
    Fixture f;
    std::vector<Request> requests{greedy({1, 2, 3}, 10), greedy({5, 9, 11, 13, 17, 19, 23}, 12), greedy({40}, 5)};
    std::vector<IdType> ids;
    for (auto const& r : requests)
    {
        ids.push_back(f.executor.enqueueRequest(r));
    }
    EXPECT_EQ(ids, (std::vector<IdType>{1, 2, 3}));
    f.responses.collect(f.executor, ids);
    for (std::size_t i = 0; i < ids.size(); ++i)
    {
        auto const& o = f.responses.outcomes[ids[i]];
        EXPECT_EQ(o.tokens, test::expectedGreedy(requests[i], 64, kVocab).tokens);
        EXPECT_EQ(o.numResponses, 1);
        EXPECT_EQ(o.final.finishReason, FinishReason::kLength);
    }
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
}

TEST(Executor, DecodeOnlyStepsCountTheKeysTheyAttendTo)
{
    Fixture f;
    // The prompt step (5 tokens) samples the first token; each of the 7 decode-only steps after
    // it computes one token at context 6, 7, ..., 12.
    IdType const id = f.executor.enqueueRequest(greedy({1, 2, 3, 4, 5}, 8));
    f.responses.collect(f.executor, {id});
    ASSERT_EQ(f.responses.outcomes[id].tokens.size(), 8U);
    auto const stats = f.executor.getLatestIterationStats();
    ASSERT_TRUE(stats.has_value());
    EXPECT_EQ(stats->totalPrefillSteps, 1);
    EXPECT_EQ(stats->totalDecodeOnlyContextTokens, 6 + 7 + 8 + 9 + 10 + 11 + 12);
}

TEST(Executor, PromptStepsCountTheirDecodesSequencesAndAttentionPairs)
{
    {
        // A prompt of 20 tokens in chunks of 16 and 4 (maxNumTokens 16): positions 0..15 score
        // 1 + ... + 16 pairs, 16..19 score 17 + ... + 20; then decodes at context 21 and 22.
        Fixture f;
        std::vector<TokenIdType> prompt;
        for (TokenIdType t = 1; t <= 20; ++t)
        {
            prompt.push_back(t);
        }
        IdType const id = f.executor.enqueueRequest(greedy(prompt, 3));
        f.responses.collect(f.executor, {id});
        auto const stats = f.executor.getLatestIterationStats();
        ASSERT_TRUE(stats.has_value());
        EXPECT_EQ(stats->totalPrefillSteps, 2);
        EXPECT_EQ(stats->totalPrefillStepSequences, 2);
        EXPECT_EQ(stats->totalPrefillStepDecodeTokens, 0);
        EXPECT_EQ(stats->totalPrefillStepDecodeContextTokens, 0);
        EXPECT_EQ(stats->totalPrefillStepPromptContextTokens, 16 + 20);
        EXPECT_EQ(stats->totalPrefillStepPromptAttentionPairs, 16 * 17 / 2 + (17 + 18 + 19 + 20));
        EXPECT_EQ(stats->totalDecodeOnlyContextTokens, 21 + 22);
    }
    // A short request decodes beside a long prompt's chunks. However the steps fall, every
    // computed position p scores p + 1 pairs once: prompt L and N new tokens compute positions
    // 0 .. L + N - 2, the prompt's in prompt chunks, the rest as decodes.
    Fixture f;
    std::atomic<bool> go{false};
    holdSteps(f, go);
    std::vector<TokenIdType> prompt(30);
    for (std::size_t i = 0; i < prompt.size(); ++i)
    {
        prompt[i] = static_cast<TokenIdType>(1 + i);
    }
    IdType const a = f.executor.enqueueRequest(greedy({1, 2, 3}, 6));
    IdType const b = f.executor.enqueueRequest(greedy(prompt, 2));
    go = true;
    f.responses.collect(f.executor, {a, b});
    auto const stats = f.executor.getLatestIterationStats();
    ASSERT_TRUE(stats.has_value());
    EXPECT_EQ(stats->totalPreemptions, 0);
    // A decode's pairs are its keys: the prompts' positions 0 .. 2 and 0 .. 29 score
    // 3 * 4 / 2 + 30 * 31 / 2 pairs; a's decodes at positions 3 .. 7 and b's at 30 the rest.
    EXPECT_EQ(stats->totalPrefillStepPromptAttentionPairs, 3 * 4 / 2 + 30 * 31 / 2);
    EXPECT_EQ(stats->totalPrefillStepDecodeContextTokens + stats->totalDecodeOnlyContextTokens,
        4 + 5 + 6 + 7 + 8 + 31);
    EXPECT_EQ(stats->totalDecodeTokens, 5 + 1);
    EXPECT_GT(stats->totalPrefillStepDecodeTokens, 0); // b's 30 tokens take two steps at least
    EXPECT_LE(stats->totalPrefillStepDecodeTokens, stats->totalDecodeTokens);
    EXPECT_GT(stats->totalPrefillStepDecodeContextTokens, 0);
    EXPECT_GT(stats->totalPrefillStepSequences, stats->totalPrefillSteps);
    // b's chunks end at 30 (one chunk) or within it (more): each ends where the next starts.
    EXPECT_GE(stats->totalPrefillStepPromptContextTokens, 3 + 30);
}

TEST(Executor, StreamingEqualsNonStreamingAndLogProbsAreExact)
{
    Fixture f;
    Request plain = greedy({3, 1, 4, 1, 5}, 9);
    plain.returnLogProbs = true;
    Request streamed = plain;
    streamed.streaming = true;
    IdType const a = f.executor.enqueueRequest(plain);
    IdType const b = f.executor.enqueueRequest(streamed);
    f.responses.collect(f.executor, {a, b});
    auto const& pa = f.responses.outcomes[a];
    auto const& pb = f.responses.outcomes[b];
    EXPECT_EQ(pa.tokens, pb.tokens);
    EXPECT_EQ(pa.logProbs, pb.logProbs);
    EXPECT_EQ(pb.numResponses, 9);
    ASSERT_EQ(pa.logProbs.size(), 9U);
    // The fake model puts 5 + noise on the favoured token and noise elsewhere.
    std::vector<TokenIdType> context = plain.inputTokenIds;
    for (std::size_t i = 0; i < pa.tokens.size(); ++i)
    {
        TokenIdType const fav = test::favouredToken(context, kVocab);
        double z = 0.0;
        for (TokenIdType v = 0; v < kVocab; ++v)
        {
            z += std::exp((v * 31 + fav * 17) % 23 * 0.1 + (v == fav ? 5.0 : 0.0));
        }
        double const expected = 5.0 + (fav * 31 + fav * 17) % 23 * 0.1 - std::log(z);
        EXPECT_NEAR(pa.logProbs[i], expected, 1e-4);
        context.push_back(pa.tokens[i]);
    }
}

TEST(Executor, StopsAtEndIdStopWordsAndMaxSeqLen)
{
    Fixture f;
    Request base = greedy({7, 8, 9}, 20);
    auto const full = test::expectedGreedy(base, 64, kVocab).tokens;
    Request withEnd = base;
    withEnd.endId = full[4];
    Request withStop = base;
    withStop.stopWords = {{63, 63}, {full[2], full[3]}};
    Request tooLong = greedy(std::vector<TokenIdType>(60, 5), 10);
    IdType const e = f.executor.enqueueRequest(withEnd);
    IdType const s = f.executor.enqueueRequest(withStop);
    IdType const l = f.executor.enqueueRequest(tooLong);
    f.responses.collect(f.executor, {e, s, l});
    auto const endAt = static_cast<std::ptrdiff_t>(std::find(full.begin(), full.end(), full[4]) - full.begin()) + 1;
    EXPECT_EQ(f.responses.outcomes[e].tokens, std::vector<TokenIdType>(full.begin(), full.begin() + endAt));
    EXPECT_EQ(f.responses.outcomes[e].final.finishReason, FinishReason::kEndId);
    EXPECT_EQ(f.responses.outcomes[s].tokens, test::expectedGreedy(withStop, 64, kVocab).tokens);
    EXPECT_EQ(f.responses.outcomes[s].final.finishReason, FinishReason::kStopWords);
    EXPECT_EQ(f.responses.outcomes[l].tokens.size(), 4U); // 60 + 4 = max_seq_len
    EXPECT_EQ(f.responses.outcomes[l].final.finishReason, FinishReason::kLength);
}

TEST(Executor, BadRequestsGetOneLineErrors)
{
    Fixture f(8);
    auto bad = [&](Request const& r) {
        IdType const id = f.executor.enqueueRequest(r);
        f.responses.collect(f.executor, {id});
        auto const& o = f.responses.outcomes[id];
        EXPECT_EQ(o.final.finishReason, FinishReason::kError);
        return o.final.errorMessage;
    };
    EXPECT_EQ(bad(greedy({}, 4)), "bad request: input_token_ids is empty; pass at least one token");
    EXPECT_EQ(bad(greedy({1, 64}, 4)), "bad request: input_token_ids[1] is 64, outside the vocabulary [0, 64)");
    EXPECT_EQ(bad(greedy({1}, 0)), "bad request: max_new_tokens is 0; ask for at least 1 new token");
    Request hot = greedy({1}, 4);
    hot.samplingConfig.temperature = -1.0F;
    EXPECT_EQ(bad(hot), "bad request: sampling_config: temperature is -1 but must be a finite value >= 0 (0 = greedy)");
    Request stop = greedy({1}, 4);
    stop.stopWords = {{}};
    EXPECT_EQ(bad(stop), "bad request: stop_words[0] is empty; each stop word needs at least one token");
    EXPECT_EQ(bad(greedy(std::vector<TokenIdType>(64, 1), 4)),
        "bad request: the prompt has 64 tokens but max_seq_len is 64; shorten it to at most 63 tokens or build "
        "the engine with a larger max_seq_len");
    EXPECT_EQ(bad(greedy(std::vector<TokenIdType>(30, 1), 10)),
        "bad request: a prompt of 30 tokens plus up to 10 new tokens needs 10 KV blocks but the cache has only 8; "
        "lower max_new_tokens or give the backend more KV blocks");
    IdType const good = f.executor.enqueueRequest(greedy({1, 2}, 3));
    f.responses.collect(f.executor, {good});
    EXPECT_EQ(f.responses.outcomes[good].final.finishReason, FinishReason::kLength);
}

TEST(Executor, BackendFailureFailsThatStepOnly)
{
    Fixture f;
    f.backend->failWhen = [](StepInputs const& s) {
        return std::find(s.inputIds.begin(), s.inputIds.end(), 63) != s.inputIds.end();
    };
    IdType const poisoned = f.executor.enqueueRequest(greedy({1, 63, 2}, 4));
    f.responses.collect(f.executor, {poisoned});
    auto const& o = f.responses.outcomes[poisoned];
    EXPECT_EQ(o.final.finishReason, FinishReason::kError);
    EXPECT_EQ(o.final.errorMessage, "the backend failed in step 0: injected failure in step 0");
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    Request const ok = greedy({1, 2}, 5);
    IdType const fine = f.executor.enqueueRequest(ok);
    f.responses.collect(f.executor, {fine});
    EXPECT_EQ(f.responses.outcomes[fine].tokens, test::expectedGreedy(ok, 64, kVocab).tokens);
}

TEST(Executor, CancelMidStreamFreesBlocks)
{
    Fixture f;
    std::atomic<bool> cancelled{false};
    holdSteps(f, cancelled, 2);
    Request r = greedy({1, 2, 3}, 40);
    r.streaming = true;
    IdType const id = f.executor.enqueueRequest(r);
    auto first = f.executor.awaitResponses(id, milliseconds(5000));
    ASSERT_FALSE(first.empty());
    f.executor.cancelRequest(id);
    cancelled = true;
    f.responses.add(first);
    f.responses.collect(f.executor, {id});
    auto const& o = f.responses.outcomes[id];
    EXPECT_EQ(o.final.finishReason, FinishReason::kCancelled);
    auto const full = test::expectedGreedy(r, 64, kVocab).tokens;
    ASSERT_LT(o.tokens.size(), full.size());
    EXPECT_EQ(o.tokens, std::vector<TokenIdType>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(o.tokens.size())));
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    f.executor.cancelRequest(id); // answered: no-op
    EXPECT_TRUE(f.executor.awaitResponses(id, milliseconds(0)).empty());
}

TEST(Executor, ShutdownAnswersPendingRequests)
{
    Fixture f;
    std::atomic<bool> entered{false};
    std::atomic<bool> release{false};
    f.backend->onStep = [&](StepInputs const&) {
        entered = true;
        while (!release)
        {
            std::this_thread::sleep_for(milliseconds(1));
        }
    };
    std::vector<IdType> ids;
    for (TokenIdType t = 1; t <= 6; ++t)
    {
        ids.push_back(f.executor.enqueueRequest(greedy({t, t}, 10)));
    }
    while (!entered)
    {
        std::this_thread::sleep_for(milliseconds(1));
    }
    std::thread stopper([&] { f.executor.shutdown(); });
    std::this_thread::sleep_for(milliseconds(20));
    release = true;
    stopper.join();
    f.responses.collect(f.executor, ids);
    for (IdType const id : ids)
    {
        auto const& o = f.responses.outcomes[id];
        EXPECT_EQ(o.numFinals, 1);
        EXPECT_EQ(o.final.finishReason, FinishReason::kCancelled);
        EXPECT_EQ(o.final.errorMessage, "the executor shut down before the request finished");
    }
    IdType const late = f.executor.enqueueRequest(greedy({1}, 1));
    auto const r = f.executor.awaitResponses(late, milliseconds(0));
    ASSERT_EQ(r.size(), 1U);
    EXPECT_EQ(r[0].errorMessage, "the executor is shut down; create a new one");
    EXPECT_TRUE(f.executor.awaitResponses().empty()); // nothing in flight: returns at once
    f.executor.shutdown();
}

TEST(Executor, PauseHoldsTheLoopBetweenStepsUntilResumed)
{
    Fixture f;
    std::atomic<bool> inStep{false};
    std::atomic<bool> slow{true};
    f.backend->onStep = [&](StepInputs const&) {
        inStep = true;
        if (slow)
        {
            std::this_thread::sleep_for(milliseconds(5));
        }
        inStep = false;
    };
    f.executor.pause(); // idle: returns at once
    f.executor.resume();
    EXPECT_THROW(f.executor.resume(), std::logic_error);

    std::vector<IdType> ids;
    for (TokenIdType t = 1; t <= 3; ++t)
    {
        ids.push_back(f.executor.enqueueRequest(greedy({t, t, t}, 20)));
    }
    waitForSteps(f, 2);
    f.executor.pause();
    EXPECT_FALSE(inStep); // returned between two steps
    f.executor.pause();   // nested: held already
    auto const held = f.backend->numSteps();
    auto const stats = f.executor.getLatestIterationStats();
    ASSERT_TRUE(stats.has_value());
    EXPECT_EQ(stats->iteration, held - 1); // the stats are those of the last step run
    IdType const late = f.executor.enqueueRequest(greedy({9}, 4)); // queues while held
    f.executor.resume();
    std::this_thread::sleep_for(milliseconds(30));
    EXPECT_EQ(f.backend->numSteps(), held); // one pause still holds it
    EXPECT_TRUE(f.executor.awaitResponses(late, milliseconds(0)).empty());
    slow = false;
    f.executor.resume();
    ids.push_back(late);
    f.responses.collect(f.executor, ids);
    EXPECT_GT(f.backend->numSteps(), held);
    for (IdType const id : ids)
    {
        EXPECT_EQ(f.responses.outcomes[id].final.finishReason, FinishReason::kLength);
    }
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);

    std::atomic<bool> refused{false};
    f.backend->onStep = [&](StepInputs const&) {
        try
        {
            f.executor.pause();
        }
        catch (std::logic_error const&)
        {
            refused = true;
        }
    };
    IdType const own = f.executor.enqueueRequest(greedy({3}, 1));
    f.responses.collect(f.executor, {own});
    EXPECT_TRUE(refused); // from a backend's forward, a pause could never be taken up
    EXPECT_EQ(f.responses.outcomes[own].final.finishReason, FinishReason::kLength);

    f.executor.pause(); // held while shutting down: shutdown still ends the loop
    f.executor.shutdown();
    f.executor.pause(); // and a pause after it returns at once
    f.executor.resume();
    f.executor.resume();
}

namespace
{
/// A backend that queues its step (as the GPU plan executor does) and computes it in finish():
/// it records, as each step starts and finishes, which step's statistics the executor had
/// published.
class StartedBackend final : public Backend
{
public:
    explicit StartedBackend(std::shared_ptr<test::FakeBackend> model)
        : mModel(std::move(model))
    {
    }

    [[nodiscard]] SizeType numBlocks() const override
    {
        return mModel->numBlocks();
    }

    [[nodiscard]] StepOutput forward(StepInputs const& step) override
    {
        return mModel->forward(step);
    }

    void start(StepInputs const& step, std::function<void()> const& beside) override
    {
        ASSERT_EQ(mStep, nullptr);
        auto const stats = executor->getLatestIterationStats();
        publishedAtStart.push_back(stats ? stats->iteration : -1);
        mStep = &step;
        beside();
        auto const after = executor->getLatestIterationStats();
        publishedBeside.push_back(after ? after->iteration : -1);
    }

    [[nodiscard]] StepOutput finish() override
    {
        auto const stats = executor->getLatestIterationStats();
        publishedAtFinish.push_back(stats ? stats->iteration : -1);
        return mModel->forward(*std::exchange(mStep, nullptr));
    }

    Executor* executor = nullptr;
    std::vector<std::int64_t> publishedAtStart;  ///< the executor's latest published step, at each start()
    std::vector<std::int64_t> publishedBeside;   ///< once start() has called `beside`
    std::vector<std::int64_t> publishedAtFinish; ///< and at each finish()

private:
    std::shared_ptr<test::FakeBackend> mModel;
    StepInputs const* mStep = nullptr;
};
} // namespace

TEST(Executor, AStepsResponsesGoOutWhileTheNextStepRuns)
{
    // In start()'s `beside` the executor publishes the step before's statistics and builds and
    // publishes its streamed responses: at start() of step k, step k - 2 is the last out; once
    // `beside` has run, and at finish(), step k - 1.
    // Outputs equal the synchronous backend's, a token a streamed response, and once the loop
    // has nothing to run everything owed is out (statistics and responses of the last step).
    ExecutorConfig const config = smallConfig();
    auto model = std::make_shared<test::FakeBackend>(32, config.tokensPerBlock, config.vocabSize);
    model->pickGreedy = true;
    auto backend = std::make_shared<StartedBackend>(model);
    Executor executor(config, backend);
    backend->executor = &executor;
    Request streamed = greedy({3, 1, 4, 1, 5}, 9);
    streamed.streaming = true;
    Request plain = greedy({2, 7, 1, 8}, 6);
    IdType const a = executor.enqueueRequest(streamed);
    IdType const b = executor.enqueueRequest(plain);
    ResponseCollector responses;
    responses.collect(executor, {a, b});
    EXPECT_EQ(responses.outcomes[a].tokens, test::expectedGreedy(streamed, 64, kVocab).tokens);
    EXPECT_EQ(responses.outcomes[a].numResponses, 9);
    EXPECT_EQ(responses.outcomes[b].tokens, test::expectedGreedy(plain, 64, kVocab).tokens);
    EXPECT_EQ(responses.outcomes[b].numResponses, 1);
    auto const& seen = backend->publishedAtFinish;
    ASSERT_GE(seen.size(), 9U);
    ASSERT_EQ(backend->publishedAtStart.size(), seen.size());
    ASSERT_EQ(backend->publishedBeside.size(), seen.size());
    for (std::size_t k = 0; k < seen.size(); ++k)
    {
        auto const before = static_cast<std::int64_t>(k) - 1;
        EXPECT_EQ(backend->publishedAtStart[k], std::max<std::int64_t>(before - 1, -1)) << "at step " << k;
        EXPECT_EQ(backend->publishedBeside[k], before) << "at step " << k;
        EXPECT_EQ(seen[k], before) << "at step " << k;
    }
    auto const stats = executor.getLatestIterationStats();
    ASSERT_TRUE(stats.has_value());
    EXPECT_EQ(stats->iteration, static_cast<std::int64_t>(seen.size()) - 1);
    EXPECT_EQ(executor.getKvCacheStats().usedBlocks, 0);
    // The executor's own parts of the steps, each measured, within the steps' time with the
    // backend's.
    EXPECT_GT(stats->totalScheduleMicros, 0.0);
    EXPECT_GT(stats->totalBesideMicros, 0.0);
    EXPECT_GT(stats->totalUpdateMicros, 0.0);
    EXPECT_LE(stats->totalScheduleMicros + stats->totalBesideMicros + stats->totalUpdateMicros
            + stats->totalForwardMicros,
        stats->totalStepMicros);
}

TEST(Executor, ACancelBetweenStepsKeepsTheStreamedTokensInTheirOwnResponse)
{
    // A streamed token accepted in step k goes out with step k + 1; a cancel taken up between
    // the two first sends it in a response of its own, then the final one with no token.
    Fixture f;
    std::atomic<bool> release{false};
    holdSteps(f, release, 3);
    Request r = greedy({1, 2, 3}, 40);
    r.streaming = true;
    IdType const id = f.executor.enqueueRequest(r);
    waitForSteps(f, 4);
    f.executor.cancelRequest(id);
    release = true;
    f.responses.collect(f.executor, {id});
    auto const& o = f.responses.outcomes[id];
    EXPECT_EQ(o.final.finishReason, FinishReason::kCancelled);
    EXPECT_TRUE(o.final.outputTokenIds.empty());
    EXPECT_EQ(static_cast<std::size_t>(o.numResponses), o.tokens.size() + 1);
    auto const full = test::expectedGreedy(r, 64, kVocab).tokens;
    ASSERT_GE(o.tokens.size(), 3U);
    EXPECT_EQ(o.tokens, std::vector<TokenIdType>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(o.tokens.size())));
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
}

TEST(Executor, SeededSamplingIgnoresBatching)
{
    Request seeded;
    seeded.inputTokenIds = {4, 8, 15, 16, 23, 42};
    seeded.maxNewTokens = 12;
    seeded.samplingConfig.temperature = 1.5F;
    seeded.samplingConfig.seed = 1234;
    auto run = [&](int companions) {
        Fixture f;
        std::vector<IdType> ids;
        for (int i = 0; i < companions; ++i)
        {
            Request other = seeded;
            other.inputTokenIds = {static_cast<TokenIdType>(i + 1), 2, 3};
            other.samplingConfig.seed = static_cast<std::uint64_t>(i);
            ids.push_back(f.executor.enqueueRequest(other));
        }
        IdType const id = f.executor.enqueueRequest(seeded);
        ids.push_back(id);
        f.responses.collect(f.executor, ids);
        return f.responses.outcomes[id].tokens;
    };
    auto const alone = run(0);
    EXPECT_EQ(alone.size(), 12U);
    EXPECT_EQ(alone, run(5));
    EXPECT_NE(alone, test::expectedGreedy(seeded, 64, kVocab).tokens); // really sampled
}

TEST(Executor, BackendPickedGreedyTokensEqualCpuSampling)
{
    // A backend that picks greedy tokens itself is asked for the logits of the other rows only,
    // and every request comes out as when the executor samples all rows on the CPU.
    std::vector<Request> requests{greedy({1, 2, 3}, 9), greedy({7, 7, 8}, 9), greedy({9, 10}, 9), greedy({30}, 9)};
    requests[0].returnLogProbs = true;
    requests[1].samplingConfig.repetitionPenalty = 1.3F;
    requests[2].samplingConfig.temperature = 0.8F;
    requests[2].samplingConfig.seed = 77;
    requests[3].samplingConfig.presencePenalty = 0.5F;
    auto run = [&](bool pick, std::vector<std::vector<SizeType>>* logitRows) {
        Fixture f;
        f.backend->pickGreedy = pick;
        if (logitRows != nullptr)
        {
            f.backend->onStep = [&](StepInputs const& step) { logitRows->push_back(step.logitRows.value()); };
        }
        std::vector<IdType> ids;
        for (auto const& r : requests)
        {
            ids.push_back(f.executor.enqueueRequest(r));
        }
        f.responses.collect(f.executor, ids);
        std::vector<test::Outcome> out;
        for (IdType id : ids)
        {
            out.push_back(f.responses.outcomes[id]);
        }
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
        return out;
    };
    std::vector<std::vector<SizeType>> logitRows;
    auto const cpu = run(false, nullptr);
    auto const picked = run(true, &logitRows);
    for (std::size_t i = 0; i < requests.size(); ++i)
    {
        EXPECT_EQ(picked[i].tokens, cpu[i].tokens) << "request " << i;
        EXPECT_EQ(picked[i].tokens.size(), 9U);
        ASSERT_EQ(picked[i].logProbs.size(), cpu[i].logProbs.size());
        for (std::size_t j = 0; j < cpu[i].logProbs.size(); ++j)
        {
            EXPECT_NEAR(picked[i].logProbs[j], cpu[i].logProbs[j], 1e-5);
        }
    }
    EXPECT_EQ(picked[0].tokens, test::expectedGreedy(requests[0], 64, kVocab).tokens);
    // Plain greedy rows (request 0) never ask for logits; the others always do when sampling.
    ASSERT_FALSE(logitRows.empty());
    for (auto const& rows : logitRows)
    {
        EXPECT_LE(rows.size(), 3U);
        EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
    }
}

TEST(Executor, BadBackendPickFailsThatRequestOnly)
{
    Fixture f;
    f.backend->pickGreedy = true;
    f.backend->poisonRow = 0;
    IdType const a = f.executor.enqueueRequest(greedy({1, 2, 3, 4, 5, 6}, 4));
    f.responses.collect(f.executor, {a});
    EXPECT_EQ(f.responses.outcomes[a].final.finishReason, FinishReason::kError);
    EXPECT_NE(f.responses.outcomes[a].final.errorMessage.find("NaN"), std::string::npos);
    f.backend->poisonRow.reset();
    Request const ok = greedy({2, 3}, 5);
    IdType const b = f.executor.enqueueRequest(ok);
    f.responses.collect(f.executor, {b});
    EXPECT_EQ(f.responses.outcomes[b].tokens, test::expectedGreedy(ok, 64, kVocab).tokens);
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
}

TEST(Executor, PreemptionKeepsOutputsExactAndPrefixReuseSavesCompute)
{
    Fixture f(12, wideConfig());
    std::atomic<bool> go{false};
    holdSteps(f, go);
    std::vector<Request> requests;
    std::vector<IdType> ids;
    for (TokenIdType i = 0; i < 6; ++i)
    {
        requests.push_back(greedy({1, 2, 3, 4, 5, 6, 7, static_cast<TokenIdType>(10 + i)}, 24));
        ids.push_back(f.executor.enqueueRequest(requests.back()));
    }
    go = true;
    f.responses.collect(f.executor, ids);
    for (std::size_t i = 0; i < ids.size(); ++i)
    {
        EXPECT_EQ(f.responses.outcomes[ids[i]].tokens, test::expectedGreedy(requests[i], 64, kVocab).tokens);
    }
    auto const stats = f.executor.getLatestIterationStats();
    ASSERT_TRUE(stats.has_value());
    EXPECT_GT(stats->totalPreemptions, 0);
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    // Step times: the backend's share inside each step's, the prompt steps' inside the total.
    EXPECT_GT(stats->stepMicros, 0.0);
    EXPECT_LE(stats->forwardMicros, stats->stepMicros);
    EXPECT_LE(stats->totalForwardMicros, stats->totalStepMicros);
    EXPECT_LE(stats->totalPrefillStepMicros, stats->totalStepMicros);
    EXPECT_GE(stats->totalPrefillSteps, 1);
    EXPECT_LE(stats->totalPrefillSteps, stats->iteration + 1);
    // Every generated token is a decode token but those a prompt step samples: each request's
    // first, and the first after each preemption (its recomputation is a prompt again).
    EXPECT_EQ(stats->totalDecodeTokens, 6 * 24 - 6 - stats->totalPreemptions);

    // The same 20-token prompt twice: the second computes only its last (partial) block.
    Fixture g;
    Request const prompt20 = greedy({9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8}, 2);
    IdType const first = g.executor.enqueueRequest(prompt20);
    g.responses.collect(g.executor, {first});
    auto const before = g.executor.getLatestIterationStats().value();
    EXPECT_EQ(before.totalComputedPromptTokens, 20);
    IdType const second = g.executor.enqueueRequest(prompt20);
    g.responses.collect(g.executor, {second});
    auto const after = g.executor.getLatestIterationStats().value();
    EXPECT_EQ(after.totalComputedPromptTokens, 24);
    EXPECT_EQ(after.totalReusedTokens, 16);
    EXPECT_EQ(g.responses.outcomes[first].tokens, g.responses.outcomes[second].tokens);
    auto const kv = g.executor.getKvCacheStats();
    EXPECT_EQ(kv.reusedTokens, 16);
    EXPECT_EQ(kv.lookedUpTokens, 40);
    EXPECT_GT(kv.cachedBlocks, 0);
}

TEST(Executor, RejectsBadConfigs)
{
    auto backend = std::make_shared<test::FakeBackend>(8, 4, 16);
    ExecutorConfig c = smallConfig();
    c.vocabSize = 0;
    EXPECT_THROW(Executor(c, backend), std::invalid_argument);
    EXPECT_THROW(Executor(smallConfig(), nullptr), std::invalid_argument);
    EXPECT_THROW(Executor(smallConfig(), std::make_shared<test::FakeBackend>(0, 4, 16)), std::invalid_argument);
}

TEST(Executor, MinTokensHoldsBackEndIdAndStopWordsOnEitherPickPath)
{
    Request base = greedy({7, 8, 9}, 20);
    auto const full = test::expectedGreedy(base, 64, kVocab).tokens;
    Request withEnd = base; // end_id held back for 6 tokens
    withEnd.endId = full[1];
    withEnd.samplingConfig.minTokens = 6;
    Request oneToken = base; // a one-token stop word held back for 3
    oneToken.stopWords = {{full[0]}};
    oneToken.samplingConfig.minTokens = 3;
    Request early = base; // a two-token stop word complete at token 4 of 6: ignored
    early.stopWords = {{full[2], full[3]}};
    early.samplingConfig.minTokens = 6;
    Request atMin = early; // complete at token 4 of 4: it ends the request
    atMin.samplingConfig.minTokens = 4;
    std::vector<Request> const requests{withEnd, oneToken, early, atMin};
    onEitherPickPath(requests, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        for (std::size_t i = 0; i < requests.size(); ++i)
        {
            auto const expected = test::expectedGreedy(requests[i], 64, kVocab);
            EXPECT_EQ(f.responses.outcomes[ids[i]].tokens, expected.tokens) << i << " " << pickOnBackend;
            EXPECT_EQ(f.responses.outcomes[ids[i]].final.finishReason, expected.reason) << i;
        }
        auto const& end = f.responses.outcomes[ids[0]].tokens;
        ASSERT_GE(end.size(), 6U);
        EXPECT_EQ(std::count(end.begin(), end.begin() + 6, withEnd.endId), 0);
        auto const& one = f.responses.outcomes[ids[1]].tokens;
        ASSERT_GE(one.size(), 3U);
        EXPECT_EQ(std::count(one.begin(), one.begin() + 3, full[0]), 0);
        auto const& ignored = f.responses.outcomes[ids[2]].tokens;
        ASSERT_GT(ignored.size(), 4U);
        EXPECT_TRUE(std::equal(full.begin(), full.begin() + 4, ignored.begin()));
        EXPECT_EQ(f.responses.outcomes[ids[3]].tokens, std::vector<TokenIdType>(full.begin(), full.begin() + 4));
        EXPECT_EQ(f.responses.outcomes[ids[3]].final.finishReason, FinishReason::kStopWords);
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
}

TEST(Executor, MinTokensOutOfRangeIsRefused)
{
    Fixture f;
    Request tooMany = greedy({1, 2}, 4);
    tooMany.samplingConfig.minTokens = 5;
    Request negative = greedy({1, 2}, 4);
    negative.samplingConfig.minTokens = -1;
    IdType const a = f.executor.enqueueRequest(tooMany);
    IdType const b = f.executor.enqueueRequest(negative);
    f.responses.collect(f.executor, {a, b});
    EXPECT_EQ(f.responses.outcomes[a].final.finishReason, FinishReason::kError);
    EXPECT_NE(f.responses.outcomes[a].final.errorMessage.find("min_tokens is 5 but max_new_tokens is 4"),
        std::string::npos)
        << f.responses.outcomes[a].final.errorMessage;
    EXPECT_NE(f.responses.outcomes[b].final.errorMessage.find("min_tokens is -1"), std::string::npos);
}

TEST(Executor, LogitBiasAndAllowedTokensSteerGreedyOnEitherPickPath)
{
    Request base = greedy({7, 8, 9}, 8);
    auto const full = test::expectedGreedy(base, 64, kVocab).tokens;
    Request banned = base; // the model's first pick biased away: the runner-up instead
    banned.samplingConfig.logitBias = {{full[0], -100.0F}};
    Request forced = base; // one token pushed above the model's pick at every step
    forced.samplingConfig.logitBias = {{5, 100.0F}};
    Request outside = base;
    outside.samplingConfig.logitBias = {{kVocab, 1.0F}};
    Request allowed = base; // two tokens allowed, the model's pick not among them
    allowed.samplingConfig.allowedTokenIds = {static_cast<TokenIdType>((full[0] + 1) % kVocab), 3};
    Request outsideAllowed = base;
    outsideAllowed.samplingConfig.allowedTokenIds = {-1};
    onEitherPickPath({banned, forced, outside, base, allowed, outsideAllowed}, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        IdType const a = ids[0];
        IdType const b = ids[1];
        IdType const c = ids[2];
        IdType const d = ids[3];
        IdType const e = ids[4];
        IdType const g = ids[5];
        for (TokenIdType const t : f.responses.outcomes[e].tokens)
        {
            EXPECT_TRUE(t == allowed.samplingConfig.allowedTokenIds[0] || t == 3) << t;
        }
        EXPECT_EQ(f.responses.outcomes[e].tokens.size(), 8U);
        EXPECT_NE(f.responses.outcomes[g].final.errorMessage.find("allowed_token_ids has token id -1"),
            std::string::npos);
        auto const& first = f.responses.outcomes[a].tokens;
        ASSERT_FALSE(first.empty());
        TokenIdType runnerUp = full[0] == 0 ? 1 : 0;
        for (TokenIdType v = 0; v < kVocab; ++v)
        {
            if (v != full[0] && test::fakeLogit(v, full[0]) > test::fakeLogit(runnerUp, full[0]))
            {
                runnerUp = v;
            }
        }
        EXPECT_EQ(first[0], runnerUp) << pickOnBackend;
        EXPECT_EQ(f.responses.outcomes[b].tokens, std::vector<TokenIdType>(8, 5)) << pickOnBackend;
        EXPECT_EQ(f.responses.outcomes[c].final.finishReason, FinishReason::kError);
        EXPECT_NE(f.responses.outcomes[c].final.errorMessage.find("logit_bias has token id 64, outside the vocabulary"),
            std::string::npos);
        EXPECT_EQ(f.responses.outcomes[d].tokens, full) << pickOnBackend;
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
}

TEST(Executor, TopLogProbsComeWithEachTokenOnEitherPickPath)
{
    Request asked = greedy({7, 8, 9}, 6);
    asked.returnLogProbs = true;
    asked.numTopLogProbs = 3;
    Request streamed = asked;
    streamed.streaming = true;
    Request without = asked;
    without.returnLogProbs = false;
    Request tooMany = asked;
    tooMany.numTopLogProbs = 21;
    auto const full = test::expectedGreedy(asked, 64, kVocab).tokens;
    onEitherPickPath({asked, streamed, without, tooMany}, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        IdType const a = ids[0];
        IdType const b = ids[1];
        IdType const c = ids[2];
        IdType const d = ids[3];
        for (IdType const id : {a, b})
        {
            auto const& out = f.responses.outcomes[id];
            EXPECT_EQ(out.tokens, full);
            ASSERT_EQ(out.topLogProbs.size(), full.size()) << pickOnBackend;
            std::vector<TokenIdType> context = asked.inputTokenIds;
            for (std::size_t i = 0; i < full.size(); ++i)
            {
                ASSERT_EQ(out.topLogProbs[i].size(), 3U);
                EXPECT_EQ(out.topLogProbs[i][0].token, full[i]);
                EXPECT_NEAR(out.topLogProbs[i][0].logProb, out.logProbs[i], 1e-6);
                TokenIdType const fav = test::favouredToken(context, kVocab);
                for (std::size_t j = 1; j < 3; ++j)
                {
                    TokenIdType const t = out.topLogProbs[i][j].token;
                    EXPECT_LE(out.topLogProbs[i][j].logProb, out.topLogProbs[i][j - 1].logProb);
                    EXPECT_NE(t, full[i]);
                    for (TokenIdType v = 0; v < kVocab; ++v) // nothing better left out
                    {
                        bool const listed = std::any_of(out.topLogProbs[i].begin(), out.topLogProbs[i].end(),
                            [v](TokenLogProb const& x) { return x.token == v; });
                        EXPECT_TRUE(listed || test::fakeLogit(v, fav) <= test::fakeLogit(t, fav));
                    }
                }
                context.push_back(full[i]);
            }
        }
        EXPECT_NE(f.responses.outcomes[c].final.errorMessage.find("return_log_probs is false"), std::string::npos);
        EXPECT_NE(f.responses.outcomes[d].final.errorMessage.find("num_top_log_probs is 21 but must be in [0, 20]"),
            std::string::npos);
    });
}

TEST(Executor, BadWordsAreNeverGeneratedOnEitherPickPath)
{
    Request base = greedy({7, 8, 9}, 10);
    auto const full = test::expectedGreedy(base, 64, kVocab).tokens;
    Request oneToken = base; // the model's third token, banned everywhere
    oneToken.badWords = {{full[2]}};
    Request twoTokens = base; // its second and third in a row, banned as a pair
    twoTokens.badWords = {{full[1], full[2]}, {63, 62, 61}};
    Request empty = base;
    empty.badWords = {{}};
    onEitherPickPath({oneToken, twoTokens, empty, base}, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        IdType const a = ids[0];
        IdType const b = ids[1];
        IdType const c = ids[2];
        IdType const d = ids[3];
        auto const& one = f.responses.outcomes[a].tokens;
        EXPECT_EQ(one, test::expectedGreedy(oneToken, 64, kVocab).tokens) << pickOnBackend;
        EXPECT_EQ(std::count(one.begin(), one.end(), full[2]), 0);
        EXPECT_TRUE(std::equal(full.begin(), full.begin() + 2, one.begin()));
        auto const& two = f.responses.outcomes[b].tokens;
        EXPECT_EQ(two, test::expectedGreedy(twoTokens, 64, kVocab).tokens) << pickOnBackend;
        EXPECT_EQ(two[1], full[1]);
        EXPECT_NE(two[2], full[2]);
        for (std::size_t i = 1; i < two.size(); ++i)
        {
            EXPECT_FALSE(two[i - 1] == full[1] && two[i] == full[2]) << i;
        }
        EXPECT_NE(f.responses.outcomes[c].final.errorMessage.find("bad_words[0] is empty"), std::string::npos);
        EXPECT_EQ(f.responses.outcomes[d].tokens, full);
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
}

TEST(Executor, ChoicesMakeTheOutputOneOfThemOnEitherPickPath)
{
    Request base = greedy({7, 8, 9}, 10);
    auto const full = test::expectedGreedy(base, 64, kVocab).tokens;
    auto const other = [&](TokenIdType t) { return static_cast<TokenIdType>((t + 1) % kVocab); };
    Request chosen = base;
    // the model's first token starts two choices; its favourite second token neither
    chosen.choices = {{full[0], other(full[1]), 3}, {full[0], 9}, {other(full[0]), full[1]}};
    Request prefix = base; // {a} begins {a, b}: taken as soon as it is complete
    prefix.choices = {{full[0], full[1]}, {full[0]}};
    Request empty = base;
    empty.choices = {{1}, {}};
    onEitherPickPath({chosen, prefix, empty, base}, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        IdType const a = ids[0];
        IdType const b = ids[1];
        IdType const c = ids[2];
        IdType const d = ids[3];
        auto const& out = f.responses.outcomes[a];
        // greedy among the two continuations of full[0]
        std::vector<TokenIdType> const x{full[0], other(full[1]), 3};
        std::vector<TokenIdType> const y{full[0], 9};
        TokenIdType const fav = test::favouredToken({7, 8, 9, full[0]}, kVocab);
        bool const xWins = test::fakeLogit(x[1], fav) > test::fakeLogit(9, fav)
            || (test::fakeLogit(x[1], fav) == test::fakeLogit(9, fav) && x[1] < 9);
        EXPECT_EQ(out.tokens, xWins ? x : y) << pickOnBackend;
        EXPECT_EQ(out.final.finishReason, FinishReason::kStopWords);
        EXPECT_EQ(f.responses.outcomes[b].tokens, std::vector<TokenIdType>{full[0]});
        EXPECT_NE(f.responses.outcomes[c].final.errorMessage.find("choices[1] is empty"), std::string::npos);
        EXPECT_EQ(f.responses.outcomes[d].tokens, full);
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
}

namespace
{

/// A vocabulary of kVocab tokens for JSON: structure, a few keys and values, and entries that
/// never continue an object (empty, plain words, or a closing brace with a byte after it).
std::shared_ptr<TokenTable const> jsonVocabulary()
{
    std::vector<std::string> const pieces = {"{", "}", "[", "]", "\"", ":", ",", " ", "\"a\"", "\"b\"", "1", "-2.5",
        "true", "null", "{\"", "\":", "x", "}\n", "", "\"\\u00e9\"", "0", "e3", ".5", "]}", "\n", "fal", "se", "\"k"};
    std::vector<std::string> bytes;
    for (SizeType t = 0; t < kVocab; ++t)
    {
        bytes.push_back(pieces[static_cast<std::size_t>(t) % pieces.size()]);
    }
    return std::make_shared<TokenTable>(std::move(bytes));
}

/// What greedy picks for a JSON request, with the fake backend's logits: the favourite of the
/// tokens whose bytes continue the object (valid against its schema, if any; lowest id on
/// ties), until it is complete.
std::pair<std::vector<TokenIdType>, bool> expectedJson(Request const& request)
{
    std::vector<TokenIdType> context = request.inputTokenIds;
    std::vector<TokenIdType> out;
    JsonObjectPrefix state(request.jsonSchema.get());
    while (static_cast<SizeType>(out.size()) < request.maxNewTokens && !state.complete())
    {
        TokenIdType const fav = test::favouredToken(context, kVocab);
        TokenIdType next = -1;
        for (TokenIdType v = 0; v < kVocab; ++v)
        {
            JsonObjectPrefix copy = state;
            std::string const& bytes = request.tokenTable->bytes[static_cast<std::size_t>(v)];
            if (!bytes.empty() && copy.feed(bytes) && (next < 0 || test::fakeLogit(v, fav) > test::fakeLogit(next, fav)))
            {
                next = v;
            }
        }
        EXPECT_GE(next, 0);
        EXPECT_TRUE(state.feed(request.tokenTable->bytes[static_cast<std::size_t>(next)]));
        out.push_back(next);
        context.push_back(next);
    }
    return {out, state.complete()};
}

/// Checks that the first requests.size() outcomes are expectedJson's, and returns how many of
/// them completed their value before the length limit.
int checkJsonOutcomes(ResponseCollector const& responses, std::vector<IdType> const& ids,
    std::vector<Request> const& requests, bool pickOnBackend)
{
    int completed = 0;
    for (std::size_t i = 0; i < requests.size(); ++i)
    {
        auto const& out = responses.outcomes.at(ids[i]);
        auto const [tokens, complete] = expectedJson(requests[i]);
        EXPECT_EQ(out.tokens, tokens) << i << " " << pickOnBackend;
        EXPECT_EQ(out.final.finishReason, complete ? FinishReason::kStopWords : FinishReason::kLength) << i;
        completed += complete ? 1 : 0;
    }
    return completed;
}

} // namespace

TEST(Executor, JsonObjectOutputsAreJsonOnEitherPickPath)
{
    auto const table = jsonVocabulary();
    std::vector<Request> requests;
    for (std::vector<TokenIdType> const& prompt : std::vector<std::vector<TokenIdType>>{{7, 8, 9}, {30, 2}, {11}})
    {
        Request r = greedy(prompt, 24);
        r.jsonObject = true;
        r.tokenTable = table;
        requests.push_back(r);
    }
    std::vector<std::string> two(static_cast<std::size_t>(kVocab)); // only "{" (id 5) and "}" (id 9)
    two[5] = "{";
    two[9] = "}";
    auto const braces = std::make_shared<TokenTable>(std::move(two)); // "{}", then stop
    Request shortest = greedy({1, 2}, 10);
    shortest.jsonObject = true;
    shortest.tokenTable = braces;
    Request withChoices = requests[0];
    withChoices.choices = {{1}};
    Request noTable = greedy({1, 2}, 10);
    noTable.jsonObject = true;
    Request plain = greedy({7, 8, 9}, 10);
    std::vector<Request> all = requests;
    all.insert(all.end(), {shortest, withChoices, noTable, plain});
    onEitherPickPath(all, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        // the cases include an object closed before the length limit
        EXPECT_GE(checkJsonOutcomes(f.responses, ids, requests, pickOnBackend), 1);
        auto const& braced = f.responses.outcomes[ids[3]];
        EXPECT_EQ(braced.tokens, (std::vector<TokenIdType>{5, 9}));
        EXPECT_EQ(braced.final.finishReason, FinishReason::kStopWords);
        EXPECT_NE(f.responses.outcomes[ids[4]].final.errorMessage.find("choices and json_object do not combine"),
            std::string::npos);
        EXPECT_NE(f.responses.outcomes[ids[5]].final.errorMessage.find("json_object needs the vocabulary's token bytes"),
            std::string::npos);
        EXPECT_EQ(f.responses.outcomes[ids[6]].tokens, test::expectedGreedy(plain, 64, kVocab).tokens);
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
}

TEST(Executor, JsonSchemaOutputsAreValuesOfTheSchemaOnEitherPickPath)
{
    // {"a": [numbers, at most 2], "b": boolean or null}, "a" required, nothing else.
    std::vector<kiln::JsonSchemaNode> nodes(5);
    nodes[0].kinds = kiln::JsonSchemaNode::kObject;
    nodes[0].names = {"a", "b"};
    nodes[0].properties = {1, 3};
    nodes[0].required = 1;
    nodes[1].kinds = kiln::JsonSchemaNode::kArray;
    nodes[1].items = 2;
    nodes[1].maxItems = 2;
    nodes[2].kinds = kiln::JsonSchemaNode::kNumber;
    nodes[3].kinds = kiln::JsonSchemaNode::kBoolean | kiln::JsonSchemaNode::kNull;
    nodes[4].kinds = kiln::JsonSchemaNode::kString; // unused
    auto const schema = std::make_shared<kiln::JsonSchema const>(std::move(nodes));
    std::vector<std::string> bytes = jsonVocabulary()->bytes;
    bytes[16] = "a"; // (the keys' letters on their own: a key begun with '"' must go on)
    bytes[27] = "b";
    auto const table = std::make_shared<TokenTable const>(std::move(bytes));
    std::vector<Request> requests;
    for (std::vector<TokenIdType> const& prompt : std::vector<std::vector<TokenIdType>>{{7, 8, 9}, {30, 2}, {4, 4}})
    {
        Request r = greedy(prompt, 30);
        r.jsonSchema = schema;
        r.tokenTable = table;
        requests.push_back(r);
    }
    Request both = requests[0];
    both.jsonObject = true;
    std::vector<Request> all = requests;
    all.push_back(both);
    onEitherPickPath(all, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        EXPECT_GE(checkJsonOutcomes(f.responses, ids, requests, pickOnBackend), 1);
        for (std::size_t i = 0; i < requests.size(); ++i)
        {
            JsonObjectPrefix plain; // a value of the schema is a JSON object too
            for (TokenIdType t : f.responses.outcomes[ids[i]].tokens)
            {
                EXPECT_TRUE(plain.feed(table->bytes[static_cast<std::size_t>(t)])) << i;
            }
        }
        EXPECT_NE(f.responses.outcomes[ids[3]].final.errorMessage.find("json_object and json_schema do not combine"),
            std::string::npos);
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
}

namespace
{
/// Checks `out`'s prompt log-probabilities (and `k` alternatives each) against the fake model.
void expectPromptScores(test::Outcome const& out, std::vector<TokenIdType> const& prompt, SizeType k)
{
    ASSERT_EQ(out.promptLogProbs.size(), prompt.size() - 1);
    ASSERT_EQ(out.promptRanks.size(), prompt.size() - 1);
    ASSERT_EQ(out.promptTopLogProbs.size(), k > 0 ? prompt.size() - 1 : 0U);
    EXPECT_EQ(out.numWithPrompt, 1);
    for (std::size_t p = 0; p + 1 < prompt.size(); ++p)
    {
        std::vector<TokenIdType> const context(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(p) + 1);
        EXPECT_NEAR(out.promptLogProbs[p], test::fakeLogProb(kVocab, context, prompt[p + 1]), 1e-4) << "position " << p;
        SizeType rank = 1;
        for (TokenIdType v = 0; v < kVocab; ++v)
        {
            rank += test::fakeLogProb(kVocab, context, v) > test::fakeLogProb(kVocab, context, prompt[p + 1]) + 1e-9 ? 1 : 0;
        }
        EXPECT_EQ(out.promptRanks[p], rank) << "position " << p;
        if (k == 0)
        {
            continue;
        }
        auto const& top = out.promptTopLogProbs[p];
        ASSERT_EQ(top.size(), static_cast<std::size_t>(k));
        EXPECT_EQ(top[0].token, test::favouredToken(context, kVocab));
        for (std::size_t j = 0; j < top.size(); ++j)
        {
            EXPECT_NEAR(top[j].logProb, test::fakeLogProb(kVocab, context, top[j].token), 1e-4);
            EXPECT_TRUE(j == 0 || top[j].logProb <= top[j - 1].logProb);
        }
    }
}
} // namespace

TEST(Executor, PromptLogProbsScoreEveryPromptTokenOnEitherPickPath)
{
    Request asked = greedy({7, 3, 9, 1, 12, 5, 30, 2, 8}, 5);
    asked.promptLogProbs = 2;
    Request streamed = asked;
    streamed.streaming = true;
    Request tokenOnly = asked;
    tokenOnly.promptLogProbs = 0;
    Request sampled = asked; // a request sampled on the host, scored alike
    sampled.samplingConfig.temperature = 0.7F;
    sampled.samplingConfig.seed = 5;
    Request single = greedy({4}, 3);
    single.promptLogProbs = 1;
    Request tooMany = asked;
    tooMany.promptLogProbs = 21;
    auto const full = test::expectedGreedy(asked, 64, kVocab).tokens;
    onEitherPickPath({asked, streamed, tokenOnly, sampled, single, tooMany},
        [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
            SCOPED_TRACE(pickOnBackend ? "backend picks" : "host samples");
            for (IdType const id : {ids[0], ids[1]})
            {
                EXPECT_EQ(f.responses.outcomes[id].tokens, full);
                expectPromptScores(f.responses.outcomes[id], asked.inputTokenIds, 2);
            }
            EXPECT_EQ(f.responses.outcomes[ids[1]].numResponses, 5);
            expectPromptScores(f.responses.outcomes[ids[2]], asked.inputTokenIds, 0);
            expectPromptScores(f.responses.outcomes[ids[3]], asked.inputTokenIds, 2);
            EXPECT_EQ(f.responses.outcomes[ids[3]].tokens.size(), 5U);
            auto const& one = f.responses.outcomes[ids[4]];
            EXPECT_TRUE(one.promptLogProbs.empty() && one.promptTopLogProbs.empty());
            EXPECT_EQ(one.tokens, test::expectedGreedy(single, 64, kVocab).tokens);
            EXPECT_NE(f.responses.outcomes[ids[5]].final.errorMessage.find(
                          "prompt_log_probs is 21 but must be in [0, 20]"),
                std::string::npos);
            EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
        });
}

TEST(Executor, PromptLogProbsTakeNothingFromThePrefixCacheAndSurvivePreemption)
{
    // A prompt cached by an earlier request is computed again, one token a step.
    Fixture g;
    Request const prompt20 = greedy({9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 9, 8}, 2);
    IdType const first = g.executor.enqueueRequest(prompt20);
    g.responses.collect(g.executor, {first});
    Request scored = prompt20;
    scored.promptLogProbs = 0;
    std::int64_t const stepsBefore = g.backend->numSteps();
    IdType const second = g.executor.enqueueRequest(scored);
    g.responses.collect(g.executor, {second});
    expectPromptScores(g.responses.outcomes[second], prompt20.inputTokenIds, 0);
    EXPECT_EQ(g.responses.outcomes[second].tokens, g.responses.outcomes[first].tokens);
    EXPECT_EQ(g.backend->numSteps() - stepsBefore, 20 + 1); // a step per prompt token, then a decode
    EXPECT_EQ(g.executor.getKvCacheStats().reusedTokens, 0);

    // Requests preempted while scoring their prompts score each prompt token once, exactly.
    Fixture f(12, wideConfig());
    std::atomic<bool> go{false};
    holdSteps(f, go);
    std::vector<Request> requests;
    std::vector<IdType> ids;
    for (TokenIdType i = 0; i < 6; ++i)
    {
        requests.push_back(greedy({1, 2, 3, 4, 5, 6, 7, static_cast<TokenIdType>(10 + i), 3, 1}, 20));
        requests.back().promptLogProbs = 1;
        ids.push_back(f.executor.enqueueRequest(requests.back()));
    }
    go = true;
    f.responses.collect(f.executor, ids);
    for (std::size_t i = 0; i < ids.size(); ++i)
    {
        EXPECT_EQ(f.responses.outcomes[ids[i]].tokens, test::expectedGreedy(requests[i], 64, kVocab).tokens);
        expectPromptScores(f.responses.outcomes[ids[i]], requests[i].inputTokenIds, 1);
    }
    EXPECT_GT(f.executor.getLatestIterationStats().value().totalPreemptions, 0);
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
}

namespace
{
Request beams(std::vector<TokenIdType> prompt, SizeType maxNew, SizeType width, TokenIdType endId = -1)
{
    Request r = greedy(std::move(prompt), maxNew);
    r.samplingConfig.beamWidth = width;
    r.endId = endId;
    return r;
}

void expectBeams(test::Outcome const& out, Request const& r)
{
    auto const want = test::expectedBeams(kVocab, r);
    ASSERT_EQ(out.beams.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i)
    {
        EXPECT_EQ(out.beams[i].tokens, want[i].tokens) << "beam " << i;
        EXPECT_FLOAT_EQ(out.beams[i].score, want[i].score);
        EXPECT_FLOAT_EQ(out.beams[i].cumLogProb, want[i].cumLogProb);
        EXPECT_TRUE(out.beams[i].finished);
    }
    EXPECT_EQ(out.tokens, want.front().tokens);
    EXPECT_EQ(out.numResponses, 1);
}
} // namespace

TEST(Executor, BeamSearchEqualsTheSearchRunDirectlyOnEitherPickPath)
{
    Request wide = beams({3, 9, 27, 17}, 7, 4);
    wide.returnLogProbs = true;
    // An end id the free search's best beam generates third, so the search meets it.
    TokenIdType const endId = test::expectedBeams(kVocab, beams({5, 1, 2, 60, 33, 8, 14, 2, 9}, 9, 3)).front().tokens[2];
    Request ended = beams({5, 1, 2, 60, 33, 8, 14, 2, 9}, 9, 3, endId);
    ended.samplingConfig.lengthPenalty = 0.5F;
    Request heuristic = beams({5, 1, 2, 60, 33, 8, 14, 2, 9}, 9, 2, endId);
    heuristic.samplingConfig.earlyStopping = 0;
    Request alongside = greedy({7, 7, 7}, 8); // a plain request in the same steps
    onEitherPickPath({wide, ended, heuristic, alongside}, [&](Fixture& f, std::vector<IdType> const& ids, bool pickOnBackend) {
        SCOPED_TRACE(pickOnBackend ? "backend picks" : "host samples");
        expectBeams(f.responses.outcomes[ids[0]], wide);
        expectBeams(f.responses.outcomes[ids[1]], ended);
        expectBeams(f.responses.outcomes[ids[2]], heuristic);
        EXPECT_EQ(f.responses.outcomes[ids[0]].logProbs, f.responses.outcomes[ids[0]].beams[0].logProbs);
        EXPECT_EQ(f.responses.outcomes[ids[0]].final.finishReason, FinishReason::kLength);
        EXPECT_EQ(f.responses.outcomes[ids[3]].tokens, test::expectedGreedy(alongside, 64, kVocab).tokens);
        EXPECT_TRUE(f.responses.outcomes[ids[3]].beams.empty());
        EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
    });
    for (Request const& r : {ended, heuristic}) // the cases check endings by the end id
    {
        auto const found = test::expectedBeams(kVocab, r);
        EXPECT_TRUE(std::any_of(found.begin(), found.end(), [&](BeamHypothesis const& h) {
            return h.tokens.back() == endId && h.tokens.size() < 9;
        }));
    }
}

TEST(Executor, BeamSearchInASmallPoolCancelledAndRefused)
{
    // A pool too small for every beam at once (9 beams of up to 5 blocks, 10 blocks) beside a
    // plain request that grows: beams wait for blocks; they hold none from one step to the next
    // (a beam is computed, reports and leaves the scheduler in one step), so nothing is preempted.
    Fixture f(10, wideConfig());
    std::atomic<bool> go{false};
    holdSteps(f, go);
    Request const plain = greedy({9, 9, 9, 9, 9}, 30);
    IdType const plainId = f.executor.enqueueRequest(plain);
    std::vector<Request> requests;
    std::vector<IdType> ids;
    for (TokenIdType i = 0; i < 3; ++i)
    {
        requests.push_back(beams({1, 2, 3, 4, 5, 6, 7, static_cast<TokenIdType>(10 + i)}, 12, 3));
        ids.push_back(f.executor.enqueueRequest(requests.back()));
    }
    go = true;
    f.responses.collect(f.executor, ids);
    f.responses.collect(f.executor, {plainId});
    for (std::size_t i = 0; i < ids.size(); ++i)
    {
        expectBeams(f.responses.outcomes[ids[i]], requests[i]);
    }
    EXPECT_EQ(f.responses.outcomes[plainId].tokens, test::expectedGreedy(plain, 64, kVocab).tokens);
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);

    // Cancelled mid-search: a final cancelled response without beams, every block back.
    Fixture g;
    std::atomic<bool> release{false};
    holdSteps(g, release, 3);
    IdType const id = g.executor.enqueueRequest(beams({4, 5, 6}, 30, 3));
    waitForSteps(g, 4);
    g.executor.cancelRequest(id);
    release = true;
    g.responses.collect(g.executor, {id});
    EXPECT_EQ(g.responses.outcomes[id].final.finishReason, FinishReason::kCancelled);
    EXPECT_TRUE(g.responses.outcomes[id].beams.empty());
    EXPECT_EQ(g.executor.getKvCacheStats().usedBlocks, 0);

    // What beam search does not combine with, and too many beams, are refused in one line.
    Request streamed = beams({1, 2}, 4, 2);
    streamed.streaming = true;
    Request sampled = beams({1, 2}, 4, 2);
    sampled.samplingConfig.temperature = 0.8F;
    Request tooWide = beams({1, 2}, 4, 11);
    std::vector<IdType> bad;
    for (Request const& r : {streamed, sampled, tooWide})
    {
        bad.push_back(g.executor.enqueueRequest(r));
    }
    g.responses.collect(g.executor, bad);
    auto message = [&](std::size_t i) { return g.responses.outcomes[bad[i]].final.errorMessage; };
    EXPECT_NE(message(0).find("beam search (beam_width 2) ranks by the model's own log-probabilities and returns its "
                              "beams at the end, so it does not combine with streaming"),
        std::string::npos);
    EXPECT_NE(message(1).find("does not combine with sampling (set temperature 0"), std::string::npos);
    EXPECT_NE(message(2).find("beam_width is 11 but must be in [1, 10]"), std::string::npos);
}

TEST(Executor, ABeamWithNaNLogitsFailsItsSearchAloneAndFreesItsBlocks)
{
    // The second of three beams' rows in the first step after the prompt gets NaN logits (a
    // beam there computes 3 tokens to a context of 7: the prompt's last 2, not in a full block,
    // and its own): the search fails, its other beam in that step is skipped, and a plain
    // request in the same steps finishes as the model says.
    Fixture f;
    auto const isBeam = [](StepInputs const& s, SizeType i) {
        auto const at = static_cast<std::size_t>(i);
        return s.contextLens[at] == 7 && s.queryStart[at + 1] - s.queryStart[at] == 3;
    };
    f.backend->nanRow = [isBeam](StepInputs const& s, SizeType b) {
        SizeType seen = 0;
        for (SizeType i = 0; i <= b; ++i)
        {
            seen += isBeam(s, i) ? 1 : 0;
        }
        return isBeam(s, b) && seen == 2;
    };
    Request const search = beams({3, 1, 4, 1, 5, 9}, 6, 3);
    Request const plain = greedy({9, 8, 7}, 6);
    IdType const a = f.executor.enqueueRequest(search);
    IdType const b = f.executor.enqueueRequest(plain);
    f.responses.collect(f.executor, {a, b});
    EXPECT_EQ(f.responses.outcomes[a].final.finishReason, FinishReason::kError);
    EXPECT_NE(f.responses.outcomes[a].final.errorMessage.find("beam search failed: the backend returned NaN logits"),
        std::string::npos);
    EXPECT_TRUE(f.responses.outcomes[a].beams.empty());
    EXPECT_EQ(f.responses.outcomes[b].tokens, test::expectedGreedy(plain, 64, kVocab).tokens);
    EXPECT_EQ(f.executor.getKvCacheStats().usedBlocks, 0);
}
