#pragma once

#include "runtime/capacity_policy.h"
#include "runtime/kv_cache_manager.h"
#include "runtime/sequence.h"
#include "runtime/types.h"

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace kiln
{

/// @brief Limits of one engine step.
struct SchedulerConfig
{
    SizeType maxBatchSize = 0; ///< sequences per step
    SizeType maxNumTokens = 0; ///< tokens per step
    SizeType maxSeqLen = 0;    ///< prompt plus generated tokens
    CapacityPolicy capacityPolicy = CapacityPolicy::kMaxUtilization;
};

/// @brief One sequence's share of a step.
struct ScheduledSequence
{
    IdType id = 0;
    SizeType numTokens = 0;     ///< tokens computed this step
    SizeType startPosition = 0; ///< position of the first of them
    bool isDecode = false;      ///< a running request's next token (not a prompt chunk)
    /// @brief Whether this step computes the sequence's last known token, so its logits give the
    /// next token (false for a prompt chunk that is not the last).
    bool samplesNextToken = false;
};

/// @brief What the scheduler decided for one step.
struct SchedulerOutput
{
    std::vector<ScheduledSequence> sequences;
    std::vector<IdType> preempted; ///< requests sent back to waiting during this step
    SizeType numPrefillTokens = 0;
    SizeType numDecodeTokens = 0;

    /// @brief Whether there is nothing to run.
    [[nodiscard]] bool empty() const
    {
        return sequences.empty();
    }
};

/// @brief Token-budget, iteration-level batching: which sequences run and how many tokens each.
///
/// Each step: running decodes first (one token each), then running prompt chunks, then waiting
/// requests in order (higher priority first, then arrival) with chunked prefill, all within
/// maxBatchSize sequences and maxNumTokens tokens; a sequence reading the logits of each prompt
/// token takes one token a step until it has them. When a running sequence cannot get a block,
/// the newest running sequence is preempted: its blocks are freed and it goes back to waiting
/// with its generated tokens, to be recomputed later. Admission never preempts. The scheduler
/// decides only; it never runs the model.
class Scheduler
{
public:
    /// @brief A scheduler that allocates from `kvCache` (which must outlive it).
    Scheduler(SchedulerConfig const& config, KvCacheManager& kvCache);

    Scheduler(Scheduler const&) = delete;
    Scheduler& operator=(Scheduler const&) = delete;
    Scheduler(Scheduler&&) = default;
    Scheduler& operator=(Scheduler&&) = default;

    /// @brief Why a request with this many prompt and new tokens can never run, or nullopt.
    [[nodiscard]] std::optional<std::string> checkFits(SizeType numPromptTokens, SizeType maxNewTokens) const;
    /// @brief Queues a request; returns the reason when it can never run (nothing is queued then).
    /// `stepwisePrompt`: its prompt is computed one token a step (Sequence::stepwiseUntil), so
    /// that the logits of every prompt position are read. `arrival`: its place among requests of
    /// its priority, taken from an earlier sequence (a beam's continuation keeps its request's
    /// place); by default after every request so far.
    [[nodiscard]] std::optional<std::string> addRequest(IdType id, std::vector<TokenIdType> prompt,
        SizeType maxNewTokens, SizeType priority = 0, bool stepwisePrompt = false,
        std::optional<std::uint64_t> arrival = std::nullopt);
    /// @brief Decides the next step and allocates its blocks.
    [[nodiscard]] SchedulerOutput schedule();
    /// @brief Records that a step ran: advances computed tokens and offers full blocks for reuse.
    void updateComputed(SchedulerOutput const& output);
    /// @brief Appends a generated token to sequence `id`.
    void appendToken(IdType id, TokenIdType token);
    /// @brief Drops sequence `id` (finished, cancelled or failed) and frees its blocks; false if unknown.
    bool removeRequest(IdType id);

    /// @brief Sequence `id`, or nullptr.
    [[nodiscard]] Sequence const* find(IdType id) const;
    /// @brief Ids of waiting requests in admission order.
    [[nodiscard]] std::vector<IdType> waitingIds() const;
    /// @brief Ids of running requests, oldest admission first.
    [[nodiscard]] std::vector<IdType> runningIds() const;
    /// @brief Whether any request is waiting or running.
    [[nodiscard]] bool hasUnfinished() const;
    /// @brief Preemptions since construction.
    [[nodiscard]] std::int64_t numPreemptions() const;

private:
    void insertWaiting(IdType id);
    void preempt(IdType id, SchedulerOutput& output, SizeType& budget);
    void scheduleRunning(bool decodes, SchedulerOutput& output, SizeType& budget);
    void admitWaiting(SchedulerOutput& output, SizeType& budget);
    /// Blocks `seq` holds or will hold at its full length.
    [[nodiscard]] SizeType finalBlocks(Sequence const& seq) const;
    /// Blocks the running requests will still take as they grow to their full length.
    [[nodiscard]] SizeType reservedBlocks() const;

    SchedulerConfig mConfig;
    KvCacheManager* mKvCache;
    std::unordered_map<IdType, Sequence> mSequences;
    std::deque<IdType> mWaiting;
    std::vector<IdType> mRunning;
    std::uint64_t mNextArrival = 0;
    std::int64_t mNumPreemptions = 0;
};

} // namespace kiln
