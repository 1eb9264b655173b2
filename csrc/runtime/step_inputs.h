#pragma once

#include "runtime/kv_cache_manager.h"
#include "runtime/scheduler.h"
#include "runtime/types.h"

#include <cstdint>
#include <optional>
#include <vector>

namespace kiln
{

/// @brief One step's inputs in the plan ABI (docs/architecture.md), flat and row-major.
struct StepInputs
{
    SizeType numSequences = 0;    ///< B
    SizeType maxBlocksPerSeq = 0; ///< MAXBLK
    std::vector<std::int32_t> inputIds;       ///< [T]
    std::vector<std::int32_t> positions;      ///< [T]
    std::vector<std::int64_t> slotMapping;    ///< [T] block_id * tokens_per_block + offset
    std::vector<std::int32_t> blockTables;    ///< [B, MAXBLK], rows padded with 0
    std::vector<std::int32_t> contextLens;    ///< [B] KV length after this step
    std::vector<std::int32_t> queryStart;     ///< [B + 1]
    std::vector<std::int32_t> lastTokenIndex; ///< [B]
    /// Rows whose logits the caller reads when the backend picks greedy tokens itself
    /// (ascending); nullopt: every row.
    std::optional<std::vector<SizeType>> logitRows;

    /// @brief T, the tokens in this step.
    [[nodiscard]] SizeType numTokens() const
    {
        return static_cast<SizeType>(inputIds.size());
    }
};

/// @brief Lays out the scheduled sequences of `output` (in order) as step inputs.
[[nodiscard]] StepInputs buildStepInputs(SchedulerOutput const& output, Scheduler const& scheduler,
    KvCacheManager const& kvCache, SizeType maxBlocksPerSeq);

} // namespace kiln
