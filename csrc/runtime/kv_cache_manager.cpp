#include "runtime/kv_cache_manager.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace kiln
{

KvCacheManager::KvCacheManager(KvCacheConfig const& config)
    : mConfig(config)
    , mPool(config.numBlocks)
{
    if (config.tokensPerBlock < 1)
    {
        throw std::invalid_argument(
            "tokens_per_block must be at least 1, got " + std::to_string(config.tokensPerBlock));
    }
}

SizeType KvCacheManager::tokensPerBlock() const
{
    return mConfig.tokensPerBlock;
}

SizeType KvCacheManager::numBlocks() const
{
    return mPool.numBlocks();
}

SizeType KvCacheManager::numFreeBlocks() const
{
    return mPool.numFreeBlocks();
}

SizeType KvCacheManager::numBlocksFor(SizeType numTokens) const
{
    return (std::max<SizeType>(numTokens, 0) + mConfig.tokensPerBlock - 1) / mConfig.tokensPerBlock;
}

KvCacheManager::Match KvCacheManager::matchPrefix(std::vector<TokenIdType> const& tokens) const
{
    Match match;
    if (!mConfig.enableReuse || tokens.empty())
    {
        return match;
    }
    SizeType const tpb = mConfig.tokensPerBlock;
    // Whole blocks only, and never the one with the last token: it must be computed for logits.
    SizeType const maxBlocks = (static_cast<SizeType>(tokens.size()) - 1) / tpb;
    std::uint64_t parent = kRootBlockHash;
    for (SizeType i = 0; i < maxBlocks; ++i)
    {
        TokenIdType const* blockTokens = tokens.data() + static_cast<std::size_t>(i) * tpb;
        std::uint64_t const hash = hashBlockTokens(parent, blockTokens, tpb);
        BlockIdType const block = mPool.lookup(hash, parent, blockTokens, tpb);
        if (block < 0)
        {
            break;
        }
        match.blocks.push_back(block);
        match.hashes.push_back(hash);
        parent = hash;
    }
    return match;
}

SizeType KvCacheManager::numReusableTokens(std::vector<TokenIdType> const& tokens) const
{
    return static_cast<SizeType>(matchPrefix(tokens).blocks.size()) * mConfig.tokensPerBlock;
}

bool KvCacheManager::canAddSequence(std::vector<TokenIdType> const& tokens, SizeType numTokens) const
{
    Match const match = matchPrefix(tokens);
    auto const numMatched = static_cast<SizeType>(match.blocks.size());
    // Matched blocks nobody references sit in the free list: taking them costs free blocks too.
    auto const numRevived = static_cast<SizeType>(std::count_if(
        match.blocks.begin(), match.blocks.end(), [this](BlockIdType b) { return mPool.refCount(b) == 0; }));
    SizeType const numNew = std::max<SizeType>(numBlocksFor(numTokens) - numMatched, 0);
    return numNew + numRevived <= mPool.numFreeBlocks();
}

SizeType KvCacheManager::addSequence(IdType id, std::vector<TokenIdType> const& tokens, SizeType numTokens)
{
    if (mSequences.count(id) != 0)
    {
        throw std::logic_error("KvCacheManager::addSequence: sequence " + std::to_string(id) + " already exists");
    }
    if (!canAddSequence(tokens, numTokens))
    {
        throw std::logic_error("KvCacheManager::addSequence: not enough free blocks (check canAddSequence first)");
    }
    Match match = matchPrefix(tokens);
    Sequence seq;
    // Take the matched blocks before allocating, so allocation cannot evict them.
    for (BlockIdType const block : match.blocks)
    {
        mPool.addRef(block);
    }
    seq.blocks = std::move(match.blocks);
    seq.hashes = std::move(match.hashes);
    while (static_cast<SizeType>(seq.blocks.size()) < numBlocksFor(numTokens))
    {
        seq.blocks.push_back(mPool.allocate());
    }
    SizeType const reused = static_cast<SizeType>(seq.hashes.size()) * mConfig.tokensPerBlock;
    mLookedUpTokens += static_cast<std::int64_t>(tokens.size());
    mReusedTokens += reused;
    mSequences.emplace(id, std::move(seq));
    return reused;
}

bool KvCacheManager::canAllocate(IdType id, SizeType numTokens) const
{
    auto const have = static_cast<SizeType>(sequence(id).blocks.size());
    return numBlocksFor(numTokens) - have <= mPool.numFreeBlocks();
}

SizeType KvCacheManager::tokenCapacity(IdType id) const
{
    return (static_cast<SizeType>(sequence(id).blocks.size()) + mPool.numFreeBlocks()) * mConfig.tokensPerBlock;
}

void KvCacheManager::allocate(IdType id, SizeType numTokens)
{
    if (!canAllocate(id, numTokens))
    {
        throw std::logic_error("KvCacheManager::allocate: not enough free blocks (check canAllocate first)");
    }
    Sequence& seq = mSequences.at(id);
    while (static_cast<SizeType>(seq.blocks.size()) < numBlocksFor(numTokens))
    {
        seq.blocks.push_back(mPool.allocate());
    }
}

void KvCacheManager::cacheComputedBlocks(
    IdType id, std::vector<TokenIdType> const& tokens, SizeType numComputedTokens)
{
    if (!mConfig.enableReuse)
    {
        return;
    }
    Sequence& seq = mSequences.at(id);
    SizeType const tpb = mConfig.tokensPerBlock;
    auto const numFull = std::min<SizeType>(std::min<SizeType>(numComputedTokens, static_cast<SizeType>(tokens.size())) / tpb,
        static_cast<SizeType>(seq.blocks.size()));
    for (auto i = static_cast<SizeType>(seq.hashes.size()); i < numFull; ++i)
    {
        std::uint64_t const parent = i == 0 ? kRootBlockHash : seq.hashes[static_cast<std::size_t>(i) - 1];
        TokenIdType const* blockTokens = tokens.data() + static_cast<std::size_t>(i) * tpb;
        std::uint64_t const hash = hashBlockTokens(parent, blockTokens, tpb);
        mPool.registerBlock(seq.blocks[static_cast<std::size_t>(i)], hash, parent, blockTokens, tpb);
        seq.hashes.push_back(hash);
    }
}

void KvCacheManager::removeSequence(IdType id)
{
    auto const it = mSequences.find(id);
    if (it == mSequences.end())
    {
        return;
    }
    auto const& blocks = it->second.blocks;
    for (auto b = blocks.rbegin(); b != blocks.rend(); ++b)
    {
        mPool.release(*b);
    }
    mSequences.erase(it);
}

bool KvCacheManager::hasSequence(IdType id) const
{
    return mSequences.count(id) != 0;
}

std::vector<BlockIdType> const& KvCacheManager::blockIds(IdType id) const
{
    return sequence(id).blocks;
}

std::vector<BlockIdType> KvCacheManager::freeBlockIds() const
{
    return mPool.freeList();
}

void KvCacheManager::resetPrefixCache()
{
    mPool.clearCache();
}

KvCacheStats KvCacheManager::stats() const
{
    KvCacheStats s;
    s.totalBlocks = mPool.numBlocks();
    s.freeBlocks = mPool.numFreeBlocks();
    s.usedBlocks = s.totalBlocks - s.freeBlocks;
    s.cachedBlocks = mPool.numCachedBlocks();
    s.lookedUpTokens = mLookedUpTokens;
    s.reusedTokens = mReusedTokens;
    s.hitRate = mLookedUpTokens > 0 ? static_cast<double>(mReusedTokens) / static_cast<double>(mLookedUpTokens) : 0.0;
    return s;
}

KvCacheManager::Sequence const& KvCacheManager::sequence(IdType id) const
{
    auto const it = mSequences.find(id);
    if (it == mSequences.end())
    {
        throw std::invalid_argument("the KV cache has no sequence " + std::to_string(id));
    }
    return it->second;
}

} // namespace kiln
