#pragma once

#include "runtime/types.h"

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace kiln
{

/// @brief Chained hash of one full block: its parent block's hash and its token ids.
[[nodiscard]] std::uint64_t hashBlockTokens(std::uint64_t parentHash, TokenIdType const* tokens, SizeType numTokens);

/// @brief The parent hash of a sequence's first block.
inline constexpr std::uint64_t kRootBlockHash = 0x6b696c6e5f6b7663ULL;

/// @brief Metadata of the physical KV blocks (no memory): reference counts, cached content, and
/// the free list, which is also the LRU order of cached blocks.
///
/// Unreferenced blocks wait in one free list and are taken from its front. A released block that
/// holds cached content goes to the back (most recently used, evicted last); one without content
/// goes to the front, so allocation consumes worthless blocks before evicting cached ones.
class BlockPool
{
public:
    /// @brief A pool of `numBlocks` free blocks, ids 0..numBlocks-1 in allocation order.
    explicit BlockPool(SizeType numBlocks);

    BlockPool(BlockPool const&) = delete;
    BlockPool& operator=(BlockPool const&) = delete;
    BlockPool(BlockPool&&) = default;
    BlockPool& operator=(BlockPool&&) = default;

    /// @brief Number of blocks in the pool.
    [[nodiscard]] SizeType numBlocks() const;
    /// @brief Unreferenced blocks (cached ones included): what allocation can take.
    [[nodiscard]] SizeType numFreeBlocks() const;
    /// @brief Unreferenced blocks that still hold reusable content.
    [[nodiscard]] SizeType numCachedBlocks() const;
    /// @brief References held on `block`.
    [[nodiscard]] SizeType refCount(BlockIdType block) const;
    /// @brief Whether `block` is registered in the prefix cache.
    [[nodiscard]] bool isCached(BlockIdType block) const;

    /// @brief Takes the block at the front of the free list (forgetting its cached content) with
    /// one reference. Requires numFreeBlocks() > 0.
    [[nodiscard]] BlockIdType allocate();
    /// @brief Adds a reference, taking an unreferenced cached block off the free list.
    void addRef(BlockIdType block);
    /// @brief Drops a reference; at zero the block joins the free list (see class comment).
    void release(BlockIdType block);

    /// @brief The cached block whose content is exactly (parentHash, tokens), or -1.
    [[nodiscard]] BlockIdType lookup(
        std::uint64_t hash, std::uint64_t parentHash, TokenIdType const* tokens, SizeType numTokens) const;
    /// @brief Registers a referenced full block under `hash`; no-op when another block already
    /// holds that content (the duplicate simply stays uncached).
    void registerBlock(
        BlockIdType block, std::uint64_t hash, std::uint64_t parentHash, TokenIdType const* tokens, SizeType numTokens);
    /// @brief Forgets all cached content; referenced blocks stay allocated.
    void clearCache();

    /// @brief Free blocks in allocation (eviction) order.
    [[nodiscard]] std::vector<BlockIdType> freeList() const;

private:
    struct Block
    {
        SizeType refCount = 0;
        bool cached = false;
        std::uint64_t hash = 0;
        std::uint64_t parentHash = 0;
        std::vector<TokenIdType> tokens; // kept to verify hits exactly, not just by hash
        BlockIdType prev = -1;
        BlockIdType next = -1;
    };

    void pushFront(BlockIdType block);
    void pushBack(BlockIdType block);
    void unlink(BlockIdType block);
    void uncache(BlockIdType block);

    std::vector<Block> mBlocks;
    std::unordered_map<std::uint64_t, BlockIdType> mCached;
    BlockIdType mHead = -1;
    BlockIdType mTail = -1;
    SizeType mNumFree = 0;
    SizeType mNumCachedFree = 0;
};

} // namespace kiln
