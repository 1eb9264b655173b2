#include "runtime/scheduler.h"

#include <gtest/gtest.h>

#include <numeric>
#include <utility>

using kiln::IdType;
using kiln::KvCacheConfig;
using kiln::KvCacheManager;
using kiln::Scheduler;
using kiln::SchedulerConfig;
using kiln::SchedulerOutput;
using kiln::SizeType;
using kiln::TokenIdType;
using Step = std::vector<std::pair<IdType, SizeType>>;

namespace
{
std::vector<TokenIdType> prompt(SizeType n, TokenIdType first = 1)
{
    std::vector<TokenIdType> t(static_cast<std::size_t>(n));
    std::iota(t.begin(), t.end(), first);
    return t;
}

/// Runs steps like the executor does, with a model that always emits token 9.
class Harness
{
public:
    Harness(SchedulerConfig const& config, KvCacheConfig const& kv)
        : kvCache(kv)
        , scheduler(config, kvCache)
    {
    }

    void add(IdType id, SizeType promptLen, SizeType maxNew, SizeType priority = 0, TokenIdType first = 1,
        bool stepwisePrompt = false)
    {
        ASSERT_EQ(scheduler.addRequest(id, prompt(promptLen, first), maxNew, priority, stepwisePrompt), std::nullopt);
    }

    /// One step: what ran, as (id, tokens).
    Step step()
    {
        last = scheduler.schedule();
        Step ran;
        scheduler.updateComputed(last);
        for (auto const& s : last.sequences)
        {
            ran.emplace_back(s.id, s.numTokens);
            if (s.samplesNextToken)
            {
                scheduler.appendToken(s.id, 9);
                auto const* seq = scheduler.find(s.id);
                if (seq->numGeneratedTokens() == seq->maxNewTokens)
                {
                    finished.push_back(s.id);
                    scheduler.removeRequest(s.id);
                }
            }
        }
        return ran;
    }

    KvCacheManager kvCache;
    Scheduler scheduler;
    SchedulerOutput last;
    std::vector<IdType> finished;
};
} // namespace

TEST(Scheduler, FillsTheTokenBudgetDecodesFirstThenChunks)
{
    Harness h({4, 8, 64}, {32, 4, false});
    h.add(1, 5, 3);
    h.add(2, 10, 2);
    h.add(3, 3, 2);
    EXPECT_EQ(h.step(), (Step{{1, 5}, {2, 3}}));
    EXPECT_EQ(h.last.numPrefillTokens, 8);
    EXPECT_FALSE(h.last.sequences[1].samplesNextToken);
    EXPECT_EQ(h.step(), (Step{{1, 1}, {2, 7}}));
    EXPECT_TRUE(h.last.sequences[0].isDecode);
    EXPECT_EQ(h.last.sequences[1].startPosition, 3);
    EXPECT_EQ(h.step(), (Step{{1, 1}, {2, 1}, {3, 3}}));
    EXPECT_EQ(h.last.numDecodeTokens, 2);
    EXPECT_EQ(h.last.numPrefillTokens, 3);
    EXPECT_EQ(h.finished, (std::vector<IdType>{1, 2}));
    EXPECT_EQ(h.step(), (Step{{3, 1}}));
    EXPECT_FALSE(h.scheduler.hasUnfinished());
    EXPECT_TRUE(h.scheduler.schedule().empty());
    EXPECT_EQ(h.kvCache.stats().usedBlocks, 0);
}

TEST(Scheduler, RespectsMaxBatchSize)
{
    Harness h({2, 100, 64}, {32, 4, false});
    h.add(1, 2, 2);
    h.add(2, 2, 2);
    h.add(3, 2, 2);
    EXPECT_EQ(h.step(), (Step{{1, 2}, {2, 2}}));
    EXPECT_EQ(h.scheduler.waitingIds(), (std::vector<IdType>{3}));
    EXPECT_EQ(h.step(), (Step{{1, 1}, {2, 1}}));
    EXPECT_EQ(h.step(), (Step{{3, 2}}));
}

TEST(Scheduler, AdmitsByPriorityThenArrival)
{
    Harness h({1, 100, 64}, {32, 4, false});
    h.add(1, 2, 1, 0);
    h.add(2, 2, 1, 5);
    h.add(3, 2, 1, 0);
    h.add(4, 2, 1, 5);
    EXPECT_EQ(h.scheduler.waitingIds(), (std::vector<IdType>{2, 4, 1, 3}));
    h.add(5, 2, 1, 3); // between the priorities waiting
    h.add(6, 2, 1, 9); // ahead of all
    h.add(7, 2, 1, 0); // last
    EXPECT_EQ(h.scheduler.waitingIds(), (std::vector<IdType>{6, 2, 4, 5, 1, 3, 7}));
    for (IdType const id : {6, 2, 4, 5, 1, 3, 7})
    {
        EXPECT_EQ(h.step(), (Step{{id, 2}}));
    }
}

TEST(Scheduler, PreemptsTheNewestAndResumesItWithItsTokens)
{
    // 4 blocks of 2 tokens: two sequences of 4 tokens fill the pool.
    Harness h({4, 16, 64}, {4, 2, false});
    h.add(1, 3, 4);
    h.add(2, 3, 4);
    EXPECT_EQ(h.step(), (Step{{1, 3}, {2, 3}}));
    EXPECT_EQ(h.step(), (Step{{1, 1}, {2, 1}}));
    // Request 1 needs a third block: request 2 (newest) is preempted; nobody is admitted.
    EXPECT_EQ(h.step(), (Step{{1, 1}}));
    EXPECT_EQ(h.last.preempted, (std::vector<IdType>{2}));
    EXPECT_EQ(h.scheduler.numPreemptions(), 1);
    EXPECT_EQ(h.scheduler.waitingIds(), (std::vector<IdType>{2}));
    EXPECT_EQ(h.scheduler.find(2)->tokens, (std::vector<TokenIdType>{1, 2, 3, 9, 9}));
    EXPECT_EQ(h.scheduler.find(2)->numComputedTokens, 0);
    // Request 2 needs 3 blocks to recompute 5 tokens; only 1 is free until request 1 finishes.
    EXPECT_EQ(h.step(), (Step{{1, 1}}));
    EXPECT_EQ(h.finished, (std::vector<IdType>{1}));
    EXPECT_EQ(h.step(), (Step{{2, 5}}));
    EXPECT_FALSE(h.last.sequences[0].isDecode);
    EXPECT_EQ(h.step(), (Step{{2, 1}}));
    EXPECT_EQ(h.finished, (std::vector<IdType>{1, 2}));
    EXPECT_EQ(h.kvCache.stats().usedBlocks, 0);
}

TEST(Scheduler, GuaranteedNoEvictAdmitsOnlyWhatCanFinish)
{
    // The pool of the preemption case above: request 1 reserves its full 7 tokens (4 blocks),
    // so request 2 waits instead of being admitted and preempted later.
    Harness h({4, 16, 64, kiln::CapacityPolicy::kGuaranteedNoEvict}, {4, 2, false});
    h.add(1, 3, 4);
    h.add(2, 3, 4);
    EXPECT_EQ(h.step(), (Step{{1, 3}}));
    EXPECT_EQ(h.scheduler.waitingIds(), (std::vector<IdType>{2}));
    for (int i = 0; i < 3; ++i)
    {
        EXPECT_EQ(h.step(), (Step{{1, 1}}));
    }
    EXPECT_EQ(h.finished, (std::vector<IdType>{1}));
    EXPECT_EQ(h.step(), (Step{{2, 3}}));
    for (int i = 0; i < 3; ++i)
    {
        EXPECT_EQ(h.step(), (Step{{2, 1}}));
    }
    EXPECT_EQ(h.finished, (std::vector<IdType>{1, 2}));
    EXPECT_EQ(h.scheduler.numPreemptions(), 0);
    EXPECT_EQ(h.kvCache.stats().usedBlocks, 0);
}

TEST(Scheduler, GuaranteedNoEvictNeverPreemptsUnderLoad)
{
    // Many requests of mixed lengths through a small pool: max_utilization preempts, the
    // guaranteed policy never does, and both finish everything with every block returned.
    for (auto const policy : {kiln::CapacityPolicy::kMaxUtilization, kiln::CapacityPolicy::kGuaranteedNoEvict})
    {
        Harness h({8, 24, 64, policy}, {24, 4, false});
        for (IdType id = 1; id <= 20; ++id)
        {
            h.add(id, 2 + static_cast<SizeType>(id * 7 % 13), 3 + static_cast<SizeType>(id * 5 % 17));
        }
        int steps = 0;
        while (h.scheduler.hasUnfinished() && steps++ < 2000)
        {
            h.step();
            auto const stats = h.kvCache.stats();
            ASSERT_LE(stats.usedBlocks, stats.totalBlocks);
        }
        EXPECT_EQ(h.finished.size(), 20U);
        EXPECT_EQ(h.kvCache.stats().usedBlocks, 0);
        if (policy == kiln::CapacityPolicy::kGuaranteedNoEvict)
        {
            EXPECT_EQ(h.scheduler.numPreemptions(), 0);
        }
        else
        {
            EXPECT_GT(h.scheduler.numPreemptions(), 0);
        }
    }
}

TEST(Scheduler, CapacityPolicyNames)
{
    EXPECT_EQ(kiln::capacityPolicyNamed("guaranteed_no_evict"), kiln::CapacityPolicy::kGuaranteedNoEvict);
    EXPECT_EQ(kiln::capacityPolicyNamed("max_utilization"), kiln::CapacityPolicy::kMaxUtilization);
    EXPECT_EQ(kiln::capacityPolicyNamed("static"), std::nullopt);
    EXPECT_EQ(kiln::capacityPolicyName(kiln::CapacityPolicy::kGuaranteedNoEvict), "guaranteed_no_evict");
}

TEST(Scheduler, PreemptsItselfWhenItIsTheNewest)
{
    Harness h({4, 16, 64}, {4, 2, false});
    h.add(1, 4, 3); // 3 blocks at most
    h.add(2, 2, 3); // 2 blocks at most
    EXPECT_EQ(h.step(), (Step{{1, 4}, {2, 2}}));
    // Request 1 (oldest) needs block 3 of 4: free; request 2 then needs a second block: none is
    // left, and it is the newest, so it preempts itself.
    EXPECT_EQ(h.step(), (Step{{1, 1}}));
    EXPECT_EQ(h.last.preempted, (std::vector<IdType>{2}));
    EXPECT_EQ(h.step(), (Step{{1, 1}}));
    EXPECT_EQ(h.step(), (Step{{2, 3}}));
    EXPECT_EQ(h.step(), (Step{{2, 1}}));
    EXPECT_EQ(h.finished, (std::vector<IdType>{1, 2}));
}

TEST(Scheduler, ChunkedPrefillOfALongPrompt)
{
    Harness h({4, 4, 64}, {32, 4, false});
    h.add(1, 10, 1);
    h.add(2, 1, 1);
    EXPECT_EQ(h.step(), (Step{{1, 4}}));
    EXPECT_EQ(h.step(), (Step{{1, 4}}));
    EXPECT_EQ(h.step(), (Step{{1, 2}, {2, 1}}));
    EXPECT_TRUE(h.last.sequences[0].samplesNextToken);
    EXPECT_EQ(h.finished, (std::vector<IdType>{1, 2}));
}

TEST(Scheduler, ReusesCachedPrefixOnAdmission)
{
    Harness h({4, 64, 64}, {32, 4, true});
    h.add(1, 10, 1);
    EXPECT_EQ(h.step(), (Step{{1, 10}}));
    h.add(2, 10, 1); // same prompt: 2 full blocks cached, the last token's block recomputed
    EXPECT_EQ(h.step(), (Step{{2, 2}}));
    EXPECT_EQ(h.last.sequences[0].startPosition, 8);
    EXPECT_EQ(h.kvCache.stats().reusedTokens, 8);
}

TEST(Scheduler, AStepwisePromptTakesATokenAStepAndRecomputesInChunks)
{
    // 6 blocks of 2 tokens, reuse on: request 1's 7-token prompt is cached first.
    Harness h({4, 64, 64}, {6, 2, true});
    h.add(1, 7, 1);
    EXPECT_EQ(h.step(), (Step{{1, 7}}));
    // The same prompt read a token a step takes nothing from the cache.
    h.add(2, 7, 4, 0, 1, /*stepwisePrompt=*/true);
    for (int i = 0; i < 6; ++i)
    {
        EXPECT_EQ(h.step(), (Step{{2, 1}})) << i;
        EXPECT_EQ(h.last.sequences[0].startPosition, i);
        EXPECT_EQ(h.last.sequences[0].samplesNextToken, i == 6);
    }
    EXPECT_EQ(h.kvCache.stats().reusedTokens, 0);
    EXPECT_EQ(h.step(), (Step{{2, 1}}));
    EXPECT_TRUE(h.last.sequences[0].samplesNextToken);

    // Preempted after reading 2 of its 4 prompt positions' logits, request 1 recomputes those in
    // one chunk, then goes on a token a step. 4 blocks of 2 tokens, no reuse.
    Harness g({4, 64, 64}, {4, 2, false});
    g.add(2, 3, 4);
    g.add(1, 5, 1, 0, 1, true);
    EXPECT_EQ(g.step(), (Step{{2, 3}, {1, 1}}));
    EXPECT_EQ(g.step(), (Step{{2, 1}, {1, 1}}));
    // Request 2 takes the last free block; request 1, the newest, is preempted.
    EXPECT_EQ(g.step(), (Step{{2, 1}}));
    EXPECT_EQ(g.last.preempted, (std::vector<IdType>{1}));
    EXPECT_EQ(g.scheduler.find(1)->stepwiseFrom, 2);
    EXPECT_EQ(g.step(), (Step{{2, 1}, {1, 2}}));
    EXPECT_EQ(g.finished, (std::vector<IdType>{2}));
    EXPECT_EQ(g.step(), (Step{{1, 1}}));
    EXPECT_EQ(g.last.sequences[0].startPosition, 2);
    EXPECT_EQ(g.step(), (Step{{1, 1}}));
    EXPECT_FALSE(g.last.sequences[0].samplesNextToken);
    EXPECT_EQ(g.step(), (Step{{1, 1}}));
    EXPECT_TRUE(g.last.sequences[0].samplesNextToken);
    EXPECT_EQ(g.finished, (std::vector<IdType>{2, 1}));
}

TEST(Scheduler, RejectsRequestsThatCanNeverRun)
{
    KvCacheManager kv(KvCacheConfig{4, 4, true});
    Scheduler s({4, 64, 32}, kv);
    EXPECT_EQ(s.addRequest(1, prompt(32), 1),
        "the prompt has 32 tokens but max_seq_len is 32; shorten it to at most 31 tokens or build the engine "
        "with a larger max_seq_len");
    EXPECT_EQ(s.addRequest(2, prompt(10), 8),
        "a prompt of 10 tokens plus up to 8 new tokens needs 5 KV blocks but the cache has only 4; lower "
        "max_new_tokens or give the backend more KV blocks");
    EXPECT_EQ(s.addRequest(3, prompt(10), 7), std::nullopt); // 16 KV tokens: 4 blocks
    EXPECT_EQ(s.addRequest(4, {}, 7), "the prompt is empty; pass at least one input token");
    EXPECT_EQ(s.addRequest(5, prompt(3), 0), "max_new_tokens is 0; ask for at least 1 new token");
    EXPECT_EQ(s.addRequest(3, prompt(3), 1), "request id 3 is already scheduled");
    EXPECT_EQ(s.waitingIds(), (std::vector<IdType>{3}));
    EXPECT_TRUE(s.removeRequest(3));
    EXPECT_FALSE(s.removeRequest(3));
}
