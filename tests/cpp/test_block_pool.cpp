#include "runtime/block_pool.h"

#include <gtest/gtest.h>

using kiln::BlockIdType;
using kiln::BlockPool;
using kiln::TokenIdType;
using Ids = std::vector<BlockIdType>;

namespace
{
std::uint64_t registerContent(BlockPool& pool, BlockIdType block, std::vector<TokenIdType> const& tokens)
{
    std::uint64_t const hash = kiln::hashBlockTokens(kiln::kRootBlockHash, tokens.data(), 4);
    pool.registerBlock(block, hash, kiln::kRootBlockHash, tokens.data(), 4);
    return hash;
}
} // namespace

TEST(BlockPool, AllocatesInIdOrderAndCounts)
{
    BlockPool pool(4);
    EXPECT_EQ(pool.freeList(), (Ids{0, 1, 2, 3}));
    EXPECT_EQ(pool.allocate(), 0);
    EXPECT_EQ(pool.allocate(), 1);
    EXPECT_EQ(pool.numFreeBlocks(), 2);
    EXPECT_EQ(pool.refCount(0), 1);
    EXPECT_EQ(pool.refCount(3), 0);
    EXPECT_THROW(BlockPool(0), std::invalid_argument);
}

TEST(BlockPool, UncachedBlocksAreReusedBeforeCachedOnes)
{
    BlockPool pool(4);
    for (int i = 0; i < 4; ++i)
    {
        (void) pool.allocate();
    }
    registerContent(pool, 2, {5, 6, 7, 8});
    pool.release(2); // cached: back of the list
    pool.release(1); // plain: front
    pool.release(0); // plain: front
    EXPECT_EQ(pool.freeList(), (Ids{0, 1, 2}));
    EXPECT_EQ(pool.numCachedBlocks(), 1);
    pool.release(3);
    EXPECT_EQ(pool.freeList(), (Ids{3, 0, 1, 2}));
    EXPECT_EQ(pool.allocate(), 3);
    EXPECT_EQ(pool.allocate(), 0);
    EXPECT_EQ(pool.allocate(), 1);
    EXPECT_TRUE(pool.isCached(2));
    EXPECT_EQ(pool.allocate(), 2); // evicts the cached content
    EXPECT_FALSE(pool.isCached(2));
    EXPECT_EQ(pool.numCachedBlocks(), 0);
    EXPECT_THROW((void) pool.allocate(), std::logic_error);
}

TEST(BlockPool, EvictsLeastRecentlyReleasedFirst)
{
    BlockPool pool(3);
    std::vector<std::uint64_t> hashes;
    for (BlockIdType b = 0; b < 3; ++b)
    {
        EXPECT_EQ(pool.allocate(), b);
        hashes.push_back(registerContent(pool, b, {b, b + 1, b + 2, b + 3}));
    }
    pool.release(1);
    pool.release(0);
    pool.release(2);
    EXPECT_EQ(pool.freeList(), (Ids{1, 0, 2}));
    // A hit revives block 0; released again, it becomes the most recently used.
    std::vector<TokenIdType> const content0{0, 1, 2, 3};
    EXPECT_EQ(pool.lookup(hashes[0], kiln::kRootBlockHash, content0.data(), 4), 0);
    pool.addRef(0);
    EXPECT_EQ(pool.freeList(), (Ids{1, 2}));
    EXPECT_EQ(pool.numCachedBlocks(), 2);
    pool.release(0);
    EXPECT_EQ(pool.freeList(), (Ids{1, 2, 0}));
    EXPECT_EQ(pool.allocate(), 1);
    EXPECT_EQ(pool.lookup(hashes[1], kiln::kRootBlockHash, content0.data(), 4), -1);
}

TEST(BlockPool, LookupVerifiesContentAndParent)
{
    BlockPool pool(2);
    (void) pool.allocate();
    std::vector<TokenIdType> const tokens{9, 8, 7, 6};
    std::uint64_t const hash = registerContent(pool, 0, tokens);
    std::vector<TokenIdType> const other{9, 8, 7, 5};
    EXPECT_EQ(pool.lookup(hash, kiln::kRootBlockHash, tokens.data(), 4), 0);
    EXPECT_EQ(pool.lookup(hash, kiln::kRootBlockHash, other.data(), 4), -1);
    EXPECT_EQ(pool.lookup(hash, kiln::kRootBlockHash + 1, tokens.data(), 4), -1);
    // A second block with the same content stays uncached.
    EXPECT_EQ(pool.allocate(), 1);
    pool.registerBlock(1, hash, kiln::kRootBlockHash, tokens.data(), 4);
    EXPECT_FALSE(pool.isCached(1));
    pool.clearCache();
    EXPECT_FALSE(pool.isCached(0));
    EXPECT_EQ(pool.lookup(hash, kiln::kRootBlockHash, tokens.data(), 4), -1);
}

TEST(BlockPool, ChainedHashDependsOnParentAndEveryToken)
{
    std::vector<TokenIdType> const a{1, 2, 3, 4};
    std::vector<TokenIdType> const b{1, 2, 4, 3};
    auto const h = kiln::hashBlockTokens(7, a.data(), 4);
    EXPECT_EQ(h, kiln::hashBlockTokens(7, a.data(), 4));
    EXPECT_NE(h, kiln::hashBlockTokens(8, a.data(), 4));
    EXPECT_NE(h, kiln::hashBlockTokens(7, b.data(), 4));
}
