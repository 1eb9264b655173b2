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
    double stepMicros = 0;    ///< wall time of this step: scheduling, the backend, sampling, publishing the one before
    double forwardMicros = 0; ///< of which in the backend's start and finish
    double totalStepMicros = 0;           ///< over every step so far
    double totalForwardMicros = 0;        ///< over every step so far
    /// Over every step so far, the executor's own parts of the step time: scheduling the step and
    /// building its inputs; the step before's responses built and published beside the backend's
    /// work (Backend::start's callback); the step's output taken in (tokens accepted, stops).
    double totalScheduleMicros = 0;
    double totalBesideMicros = 0;
    double totalUpdateMicros = 0;
    double totalPrefillStepMicros = 0;    ///< over the steps so far that computed prompt tokens
    std::int64_t totalPrefillSteps = 0;   ///< steps so far that computed prompt tokens
    std::int64_t totalDecodeTokens = 0;   ///< decode tokens computed so far
    /// Keys the decode-only steps so far attended to: each step's sequences' context lengths summed.
    std::int64_t totalDecodeOnlyContextTokens = 0;
    /// Of the steps so far that computed prompt tokens: the decode tokens they computed beside
    /// the prompts and the keys those decodes attended to (their context lengths summed), the
    /// sequences they scheduled, the prompt chunks' context lengths after the step summed (the
    /// keys their attention reads) and the (query, key) pairs the chunks scored (a token at
    /// position p attends to p + 1 keys).
    std::int64_t totalPrefillStepDecodeTokens = 0;
    std::int64_t totalPrefillStepDecodeContextTokens = 0;
    std::int64_t totalPrefillStepSequences = 0;
    std::int64_t totalPrefillStepPromptContextTokens = 0;
    std::int64_t totalPrefillStepPromptAttentionPairs = 0;
};

} // namespace kiln
