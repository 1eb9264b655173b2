#pragma once

#include "runtime/capacity_policy.h"
#include "runtime/types.h"

#include <optional>
#include <string>

namespace kiln
{

/// @brief Limits and cache shape of an executor; the number of KV blocks comes from the backend.
struct ExecutorConfig
{
    SizeType maxBatchSize = 8;   ///< sequences per step
    SizeType maxNumTokens = 512; ///< tokens per step (longer prompts are chunked)
    SizeType maxSeqLen = 2048;   ///< prompt plus generated tokens
    SizeType tokensPerBlock = 16;
    SizeType vocabSize = 0;
    bool enableKvCacheReuse = true;
    CapacityPolicy capacityPolicy = CapacityPolicy::kMaxUtilization;

    /// @brief Width of the step's block tables: blocks of the longest sequence.
    [[nodiscard]] SizeType maxBlocksPerSeq() const
    {
        return tokensPerBlock > 0 ? (maxSeqLen + tokensPerBlock - 1) / tokensPerBlock : 0;
    }
    /// @brief What is wrong with these values (one line), or nullopt when they are valid.
    [[nodiscard]] std::optional<std::string> validate() const;
};

} // namespace kiln
