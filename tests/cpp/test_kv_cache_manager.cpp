#include "runtime/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <numeric>

using kiln::BlockIdType;
using kiln::KvCacheConfig;
using kiln::KvCacheManager;
using kiln::TokenIdType;
using Ids = std::vector<BlockIdType>;
using Tokens = std::vector<TokenIdType>;

namespace
{
Tokens range(TokenIdType begin, TokenIdType count)
{
    Tokens t(static_cast<std::size_t>(count));
    std::iota(t.begin(), t.end(), begin);
    return t;
}

Tokens concat(Tokens a, Tokens const& b)
{
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

/// Adds a sequence over all of `tokens` and marks them computed.
void addComputed(KvCacheManager& kv, kiln::IdType id, Tokens const& tokens)
{
    auto const n = static_cast<kiln::SizeType>(tokens.size());
    ASSERT_TRUE(kv.canAddSequence(tokens, n));
    (void) kv.addSequence(id, tokens, n);
    kv.cacheComputedBlocks(id, tokens, n);
}
} // namespace

TEST(KvCacheManager, ReusesFullPrefixBlocks)
{
    KvCacheManager kv(KvCacheConfig{10, 4, true});
    Tokens const a = range(100, 10);
    EXPECT_EQ(kv.addSequence(1, a, 10), 0);
    EXPECT_EQ(kv.blockIds(1), (Ids{0, 1, 2}));
    kv.cacheComputedBlocks(1, a, 10); // blocks 0 and 1 are full

    Tokens const b = concat(range(100, 8), {7});
    EXPECT_EQ(kv.numReusableTokens(b), 8);
    EXPECT_EQ(kv.addSequence(2, b, 9), 8);
    EXPECT_EQ(kv.blockIds(2), (Ids{0, 1, 3}));

    auto const s = kv.stats();
    EXPECT_EQ(s.usedBlocks, 4);
    EXPECT_EQ(s.freeBlocks, 6);
    EXPECT_EQ(s.lookedUpTokens, 19);
    EXPECT_EQ(s.reusedTokens, 8);
    EXPECT_DOUBLE_EQ(s.hitRate, 8.0 / 19.0);
}

TEST(KvCacheManager, NeverReusesTheBlockOfTheLastPromptToken)
{
    KvCacheManager kv(KvCacheConfig{10, 4, true});
    addComputed(kv, 1, range(0, 12));
    EXPECT_EQ(kv.numReusableTokens(range(0, 12)), 8); // all cached, last block recomputed
    EXPECT_EQ(kv.numReusableTokens(range(0, 9)), 8);
    EXPECT_EQ(kv.numReusableTokens(range(0, 8)), 4);
    EXPECT_EQ(kv.numReusableTokens(range(0, 4)), 0);
    EXPECT_EQ(kv.addSequence(2, range(0, 12), 12), 8);
    EXPECT_EQ(kv.blockIds(2), (Ids{0, 1, 3}));
}

TEST(KvCacheManager, SameBlockAfterDifferentPrefixIsNoHit)
{
    KvCacheManager kv(KvCacheConfig{10, 4, true});
    addComputed(kv, 1, range(0, 8));
    // Block content 4..7 is cached, but after prefix 0..3; here it follows 50..53.
    Tokens const other = concat(concat(range(50, 4), range(4, 4)), {1});
    EXPECT_EQ(kv.numReusableTokens(other), 0);
    // The same second block after the same first block hits.
    EXPECT_EQ(kv.numReusableTokens(concat(range(0, 8), {1})), 8);
}

TEST(KvCacheManager, EvictsUnreferencedCachedBlocksLeastRecentlyUsedFirst)
{
    KvCacheManager kv(KvCacheConfig{10, 4, true});
    Tokens const a = range(100, 10);
    addComputed(kv, 1, a); // blocks 0, 1 (cached), 2
    (void) kv.addSequence(2, concat(range(100, 8), {7}), 9); // reuses 0, 1; new 3
    kv.removeSequence(2);
    EXPECT_EQ(kv.freeBlockIds(), (Ids{3, 4, 5, 6, 7, 8, 9}));
    kv.removeSequence(1); // tail first: 2 (plain) to the front, then 1 and 0 to the back
    EXPECT_EQ(kv.freeBlockIds(), (Ids{2, 3, 4, 5, 6, 7, 8, 9, 1, 0}));
    EXPECT_EQ(kv.stats().cachedBlocks, 2);
    EXPECT_EQ(kv.stats().usedBlocks, 0);

    (void) kv.addSequence(3, range(500, 24), 24);
    EXPECT_EQ(kv.blockIds(3), (Ids{2, 3, 4, 5, 6, 7}));
    ASSERT_TRUE(kv.canAllocate(3, 28));
    kv.allocate(3, 28);
    EXPECT_EQ(kv.blockIds(3).back(), 8);
    EXPECT_EQ(kv.numReusableTokens(a), 8);
    kv.allocate(3, 36); // takes 9, then evicts 1 (used before 0)
    EXPECT_EQ(kv.blockIds(3), (Ids{2, 3, 4, 5, 6, 7, 8, 9, 1}));
    EXPECT_EQ(kv.numReusableTokens(a), 4);
    kv.allocate(3, 40);
    EXPECT_EQ(kv.numReusableTokens(a), 0);
    EXPECT_FALSE(kv.canAllocate(3, 41));
    EXPECT_EQ(kv.tokenCapacity(3), 40);
}

TEST(KvCacheManager, RevivingCachedBlocksCountsAgainstFreeBlocks)
{
    KvCacheManager kv(KvCacheConfig{4, 4, true});
    addComputed(kv, 1, range(0, 12)); // blocks 0, 1, 2 all full and cached
    kv.removeSequence(1);
    EXPECT_EQ(kv.freeBlockIds(), (Ids{3, 2, 1, 0}));
    Tokens const longer = concat(range(0, 12), range(90, 5)); // 17 tokens: 5 blocks
    EXPECT_EQ(kv.numReusableTokens(longer), 12);
    EXPECT_FALSE(kv.canAddSequence(longer, 17));
    Tokens const fits = concat(range(0, 12), range(90, 4)); // 16 tokens: 4 blocks
    ASSERT_TRUE(kv.canAddSequence(fits, 16));
    EXPECT_EQ(kv.addSequence(2, fits, 16), 12);
    EXPECT_EQ(kv.blockIds(2), (Ids{0, 1, 2, 3}));
    EXPECT_EQ(kv.numFreeBlocks(), 0);
}

TEST(KvCacheManager, BlocksFilledDuringDecodeBecomeReusable)
{
    KvCacheManager kv(KvCacheConfig{8, 4, true});
    Tokens tokens = range(10, 3);
    (void) kv.addSequence(1, tokens, 3);
    kv.cacheComputedBlocks(1, tokens, 3);
    EXPECT_EQ(kv.numReusableTokens(concat(tokens, range(0, 6))), 0);
    for (TokenIdType t : {40, 41, 42, 43, 44})
    {
        tokens.push_back(t);
        ASSERT_TRUE(kv.canAllocate(1, static_cast<kiln::SizeType>(tokens.size())));
        kv.allocate(1, static_cast<kiln::SizeType>(tokens.size()));
        kv.cacheComputedBlocks(1, tokens, static_cast<kiln::SizeType>(tokens.size()));
    }
    EXPECT_EQ(kv.blockIds(1), (Ids{0, 1}));
    EXPECT_EQ(kv.numReusableTokens(concat(tokens, {3})), 8);
}

TEST(KvCacheManager, ResetAndDisabledReuse)
{
    KvCacheManager kv(KvCacheConfig{8, 4, true});
    addComputed(kv, 1, range(0, 9));
    EXPECT_EQ(kv.numReusableTokens(range(0, 9)), 8);
    kv.resetPrefixCache();
    EXPECT_EQ(kv.numReusableTokens(range(0, 9)), 0);
    kv.removeSequence(1);
    EXPECT_EQ(kv.stats().cachedBlocks, 0);
    EXPECT_EQ(kv.freeBlockIds(), (Ids{0, 1, 2, 3, 4, 5, 6, 7}));

    KvCacheManager off(KvCacheConfig{8, 4, false});
    addComputed(off, 1, range(0, 9));
    EXPECT_EQ(off.numReusableTokens(range(0, 9)), 0);
    EXPECT_EQ(off.addSequence(2, range(0, 9), 9), 0);
    EXPECT_EQ(off.blockIds(2), (Ids{3, 4, 5}));
}

TEST(KvCacheManager, UnknownSequenceIsAnError)
{
    KvCacheManager kv(KvCacheConfig{2, 4, true});
    EXPECT_THROW((void) kv.blockIds(5), std::invalid_argument);
    EXPECT_THROW(KvCacheManager(KvCacheConfig{2, 0, true}), std::invalid_argument);
    EXPECT_FALSE(kv.hasSequence(5));
    kv.removeSequence(5); // no-op
}
