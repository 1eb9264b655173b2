#pragma once

#include "runtime/types.h"

#include <cstdint>

namespace kiln
{

/// @brief What one executor step did, plus running totals.
struct IterationStats
{
    std::int64_t iteration = 0; ///< 0 for the first step
    SizeType numScheduledRequests = 0;
    SizeType numPrefillTokens = 0; ///< prompt (or recomputed) tokens computed this step
    SizeType numDecodeTokens = 0;
    SizeType numWaitingRequests = 0; ///< after the step
    SizeType numRunningRequests = 0; ///< after the step
    SizeType kvUsedBlocks = 0;
    SizeType kvFreeBlocks = 0;
    std::int64_t totalComputedPromptTokens = 0; ///< prefill tokens computed so far
    std::int64_t totalReusedTokens = 0;         ///< prompt tokens served from the prefix cache so far
    std::int64_t totalPreemptions = 0;
};

} // namespace kiln
