#pragma once

#include "runtime/types.h"

#include <cstdint>
#include <vector>

namespace kiln
{

/// @brief Scheduling state of one request: its tokens and how many of them have KV computed.
struct Sequence
{
    IdType id = 0;
    std::vector<TokenIdType> tokens; ///< prompt followed by the generated tokens
    SizeType numPromptTokens = 0;
    SizeType numComputedTokens = 0; ///< leading tokens whose KV is in the cache
    SizeType maxNewTokens = 0;
    SizeType priority = 0;      ///< higher is admitted first
    std::uint64_t arrival = 0;  ///< admission order among equal priorities
    SizeType numPreemptions = 0;
    /// Tokens from stepwiseFrom up to stepwiseUntil are computed one a step, so the logits of each
    /// are read (a request's prompt log-probabilities); stepwiseFrom follows the computed tokens,
    /// so a preempted sequence recomputes those done already in chunks, and takes no more from the
    /// prefix cache than them.
    SizeType stepwiseFrom = 0;
    SizeType stepwiseUntil = 0;

    /// @brief Tokens still to compute before the next token can be sampled.
    [[nodiscard]] SizeType numRemainingTokens() const
    {
        return static_cast<SizeType>(tokens.size()) - numComputedTokens;
    }

    /// @brief Tokens generated so far.
    [[nodiscard]] SizeType numGeneratedTokens() const
    {
        return static_cast<SizeType>(tokens.size()) - numPromptTokens;
    }
};

} // namespace kiln
