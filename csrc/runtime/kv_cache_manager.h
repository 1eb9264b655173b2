#pragma once

#include "runtime/block_pool.h"
#include "runtime/types.h"

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace kiln
{

/// @brief Shape of the paged KV cache as the manager sees it.
struct KvCacheConfig
{
    SizeType numBlocks = 0;
    SizeType tokensPerBlock = 0;
    bool enableReuse = true;
};

/// @brief A snapshot of the cache's occupancy and prefix-reuse counters.
struct KvCacheStats
{
    SizeType totalBlocks = 0;
    SizeType usedBlocks = 0;   ///< referenced by some sequence
    SizeType freeBlocks = 0;   ///< unreferenced, cached ones included
    SizeType cachedBlocks = 0; ///< unreferenced and holding reusable content
    std::int64_t lookedUpTokens = 0;
    std::int64_t reusedTokens = 0;
    double hitRate = 0.0; ///< reusedTokens / lookedUpTokens
};

/// @brief Per-sequence block tables over a BlockPool, with prefix reuse across sequences.
///
/// A full block is identified by the chained hash of its parent's hash and its token ids, so equal
/// blocks after different prefixes never match. Only full blocks are reused, and never the block
/// holding a prompt's last token: that token must be computed so the step yields logits.
class KvCacheManager
{
public:
    /// @brief A manager over `config.numBlocks` blocks of `config.tokensPerBlock` tokens.
    explicit KvCacheManager(KvCacheConfig const& config);

    KvCacheManager(KvCacheManager const&) = delete;
    KvCacheManager& operator=(KvCacheManager const&) = delete;
    KvCacheManager(KvCacheManager&&) = default;
    KvCacheManager& operator=(KvCacheManager&&) = default;

    /// @brief Tokens per block.
    [[nodiscard]] SizeType tokensPerBlock() const;
    /// @brief Blocks in the pool.
    [[nodiscard]] SizeType numBlocks() const;
    /// @brief Blocks that allocation can take now.
    [[nodiscard]] SizeType numFreeBlocks() const;
    /// @brief Blocks needed to hold `numTokens` tokens.
    [[nodiscard]] SizeType numBlocksFor(SizeType numTokens) const;

    /// @brief Leading tokens of `tokens` whose KV is cached and would be reused by addSequence.
    [[nodiscard]] SizeType numReusableTokens(std::vector<TokenIdType> const& tokens) const;
    /// @brief Whether a new sequence over `tokens` can get blocks for its first `numTokens` tokens.
    [[nodiscard]] bool canAddSequence(std::vector<TokenIdType> const& tokens, SizeType numTokens) const;
    /// @brief Creates the block table of sequence `id` for its first `numTokens` tokens, sharing
    /// cached prefix blocks; returns the number of reused tokens. Requires canAddSequence.
    SizeType addSequence(IdType id, std::vector<TokenIdType> const& tokens, SizeType numTokens);

    /// @brief Whether sequence `id` can grow to hold `numTokens` tokens.
    [[nodiscard]] bool canAllocate(IdType id, SizeType numTokens) const;
    /// @brief Most tokens sequence `id` could hold with its blocks plus every free one.
    [[nodiscard]] SizeType tokenCapacity(IdType id) const;
    /// @brief Grows sequence `id` to hold `numTokens` tokens. Requires canAllocate.
    void allocate(IdType id, SizeType numTokens);

    /// @brief Offers the full blocks among the first `numComputedTokens` of `tokens` (whose KV is
    /// now written) for reuse by later sequences.
    void cacheComputedBlocks(IdType id, std::vector<TokenIdType> const& tokens, SizeType numComputedTokens);
    /// @brief Drops sequence `id`, releasing its blocks tail first (so tails are evicted first).
    void removeSequence(IdType id);

    /// @brief Whether sequence `id` has a block table.
    [[nodiscard]] bool hasSequence(IdType id) const;
    /// @brief The block table of sequence `id`.
    [[nodiscard]] std::vector<BlockIdType> const& blockIds(IdType id) const;
    /// @brief Free blocks in eviction order (least recently used first).
    [[nodiscard]] std::vector<BlockIdType> freeBlockIds() const;
    /// @brief Forgets every cached prefix (e.g. after the weights change); counters are kept.
    void resetPrefixCache();
    /// @brief Occupancy and reuse counters.
    [[nodiscard]] KvCacheStats stats() const;

private:
    struct Match
    {
        std::vector<BlockIdType> blocks;
        std::vector<std::uint64_t> hashes;
    };
    struct Sequence
    {
        std::vector<BlockIdType> blocks;
        std::vector<std::uint64_t> hashes; ///< chained hashes of the leading full, computed blocks
    };

    [[nodiscard]] Match matchPrefix(std::vector<TokenIdType> const& tokens) const;
    [[nodiscard]] Sequence const& sequence(IdType id) const;

    KvCacheConfig mConfig;
    BlockPool mPool;
    std::unordered_map<IdType, Sequence> mSequences;
    std::int64_t mLookedUpTokens = 0;
    std::int64_t mReusedTokens = 0;
};

} // namespace kiln
