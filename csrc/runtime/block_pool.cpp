#include "runtime/block_pool.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace kiln
{
namespace
{
std::uint64_t mix(std::uint64_t x)
{
    // splitmix64 finalizer: cheap, and every input bit moves every output bit.
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
} // namespace

std::uint64_t hashBlockTokens(std::uint64_t parentHash, TokenIdType const* tokens, SizeType numTokens)
{
    std::uint64_t h = mix(parentHash);
    for (SizeType i = 0; i < numTokens; ++i)
    {
        h = mix(h ^ static_cast<std::uint32_t>(tokens[i]));
    }
    return h;
}

BlockPool::BlockPool(SizeType numBlocks)
{
    if (numBlocks < 1)
    {
        throw std::invalid_argument("a KV cache needs at least one block, got " + std::to_string(numBlocks));
    }
    mBlocks.resize(static_cast<std::size_t>(numBlocks));
    for (BlockIdType b = 0; b < numBlocks; ++b)
    {
        pushBack(b);
    }
}

SizeType BlockPool::numBlocks() const
{
    return static_cast<SizeType>(mBlocks.size());
}

SizeType BlockPool::numFreeBlocks() const
{
    return mNumFree;
}

SizeType BlockPool::numCachedBlocks() const
{
    return mNumCachedFree;
}

SizeType BlockPool::refCount(BlockIdType block) const
{
    return mBlocks.at(static_cast<std::size_t>(block)).refCount;
}

bool BlockPool::isCached(BlockIdType block) const
{
    return mBlocks.at(static_cast<std::size_t>(block)).cached;
}

BlockIdType BlockPool::allocate()
{
    if (mHead < 0)
    {
        throw std::logic_error("BlockPool::allocate called with no free block");
    }
    BlockIdType const block = mHead;
    unlink(block);
    uncache(block);
    mBlocks[static_cast<std::size_t>(block)].refCount = 1;
    return block;
}

void BlockPool::addRef(BlockIdType block)
{
    Block& b = mBlocks.at(static_cast<std::size_t>(block));
    if (b.refCount++ == 0)
    {
        unlink(block);
    }
}

void BlockPool::release(BlockIdType block)
{
    Block& b = mBlocks.at(static_cast<std::size_t>(block));
    if (b.refCount <= 0)
    {
        throw std::logic_error("BlockPool::release of an unreferenced block " + std::to_string(block));
    }
    if (--b.refCount == 0)
    {
        if (b.cached)
        {
            pushBack(block);
        }
        else
        {
            pushFront(block);
        }
    }
}

BlockIdType BlockPool::lookup(
    std::uint64_t hash, std::uint64_t parentHash, TokenIdType const* tokens, SizeType numTokens) const
{
    auto const it = mCached.find(hash);
    if (it == mCached.end())
    {
        return -1;
    }
    Block const& b = mBlocks[static_cast<std::size_t>(it->second)];
    bool const same = b.parentHash == parentHash && static_cast<SizeType>(b.tokens.size()) == numTokens
        && std::equal(b.tokens.begin(), b.tokens.end(), tokens);
    return same ? it->second : -1;
}

void BlockPool::registerBlock(
    BlockIdType block, std::uint64_t hash, std::uint64_t parentHash, TokenIdType const* tokens, SizeType numTokens)
{
    Block& b = mBlocks.at(static_cast<std::size_t>(block));
    if (b.cached || mCached.count(hash) != 0)
    {
        return;
    }
    b.cached = true;
    b.hash = hash;
    b.parentHash = parentHash;
    b.tokens.assign(tokens, tokens + numTokens);
    mCached.emplace(hash, block);
    if (b.refCount == 0)
    {
        ++mNumCachedFree;
    }
}

void BlockPool::clearCache()
{
    for (auto const& entry : mCached)
    {
        Block& b = mBlocks[static_cast<std::size_t>(entry.second)];
        b.cached = false;
        b.tokens.clear();
    }
    mCached.clear();
    mNumCachedFree = 0;
}

std::vector<BlockIdType> BlockPool::freeList() const
{
    std::vector<BlockIdType> order;
    for (BlockIdType b = mHead; b >= 0; b = mBlocks[static_cast<std::size_t>(b)].next)
    {
        order.push_back(b);
    }
    return order;
}

void BlockPool::pushFront(BlockIdType block)
{
    Block& b = mBlocks[static_cast<std::size_t>(block)];
    b.prev = -1;
    b.next = mHead;
    (mHead >= 0 ? mBlocks[static_cast<std::size_t>(mHead)].prev : mTail) = block;
    mHead = block;
    ++mNumFree;
    mNumCachedFree += b.cached ? 1 : 0;
}

void BlockPool::pushBack(BlockIdType block)
{
    Block& b = mBlocks[static_cast<std::size_t>(block)];
    b.next = -1;
    b.prev = mTail;
    (mTail >= 0 ? mBlocks[static_cast<std::size_t>(mTail)].next : mHead) = block;
    mTail = block;
    ++mNumFree;
    mNumCachedFree += b.cached ? 1 : 0;
}

void BlockPool::unlink(BlockIdType block)
{
    Block& b = mBlocks[static_cast<std::size_t>(block)];
    (b.prev >= 0 ? mBlocks[static_cast<std::size_t>(b.prev)].next : mHead) = b.next;
    (b.next >= 0 ? mBlocks[static_cast<std::size_t>(b.next)].prev : mTail) = b.prev;
    b.prev = b.next = -1;
    --mNumFree;
    mNumCachedFree -= b.cached ? 1 : 0;
}

void BlockPool::uncache(BlockIdType block)
{
    Block& b = mBlocks[static_cast<std::size_t>(block)];
    if (b.cached)
    {
        mCached.erase(b.hash);
        b.cached = false;
        b.tokens.clear();
    }
}

} // namespace kiln
