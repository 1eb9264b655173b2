#pragma once

#include "runtime/backend.h"
#include "runtime/executor_config.h"
#include "runtime/iteration_stats.h"
#include "runtime/kv_cache_manager.h"
#include "runtime/request.h"
#include "runtime/response.h"
#include "runtime/types.h"

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

namespace kiln
{

/// @brief Serves requests with inflight batching over a backend, on a thread of its own.
///
/// Each step: schedule -> backend start (the step before's responses and statistics published
/// beside the step's work) -> backend finish -> sample -> update (append tokens, check stops,
/// free finished requests).
/// Every enqueued request gets exactly one final response: finished, failed
/// (a bad request, or a backend error in one of its steps) or cancelled (by cancelRequest or
/// shutdown). All public methods may be called from many threads at once.
class Executor
{
public:
    /// @brief Starts an executor; the KV pool has backend->numBlocks() blocks.
    /// Throws std::invalid_argument for an invalid config or backend.
    Executor(ExecutorConfig const& config, std::shared_ptr<Backend> backend);
    /// @brief Shuts down (see shutdown()).
    ~Executor();

    Executor(Executor const&) = delete;
    Executor& operator=(Executor const&) = delete;
    Executor(Executor&&) noexcept;
    Executor& operator=(Executor&&) noexcept;

    /// @brief Queues a request and returns its id. Never throws for the request's content: a bad
    /// request gets a final error response naming the problem.
    [[nodiscard]] IdType enqueueRequest(Request const& request);
    /// @brief Queues requests together, their ids in order: no step takes some of them before
    /// the loop has them all (a batch's prompts share its first steps, as the scheduler allows).
    [[nodiscard]] std::vector<IdType> enqueueRequests(std::vector<Request> const& requests);
    /// @brief Every ready response, waiting up to `timeout` (forever when unset) for at least one;
    /// returns at once, empty, when no request is in flight.
    [[nodiscard]] std::vector<Response> awaitResponses(
        std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    /// @brief The ready responses of request `id`, waiting like awaitResponses; empty at once for
    /// an id that is unknown or already answered.
    [[nodiscard]] std::vector<Response> awaitResponses(
        IdType id, std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    /// @brief Asks to stop request `id`; it gets a final "cancelled" response with the tokens not
    /// yet sent. No-op for an unknown or answered id.
    void cancelRequest(IdType id);
    /// @brief Stops the loop after the current step; requests still pending get final
    /// "cancelled" responses, later enqueues get error responses. Idempotent.
    void shutdown();
    /// @brief Holds the loop between two steps: returns once no step runs and none will start
    /// until the matching resume(); requests keep queueing meanwhile. Pauses nest (each needs its
    /// resume()). Returns at once when the executor is shut down. Throws std::logic_error from
    /// the executor's own thread (a backend's forward).
    void pause();
    /// @brief Ends one pause(); the loop goes on when none is left. Throws std::logic_error
    /// without a pause to end.
    void resume();

    /// @brief Statistics of the latest step, or nullopt before the first one.
    [[nodiscard]] std::optional<IterationStats> getLatestIterationStats() const;
    /// @brief KV cache occupancy and reuse counters as of the latest step.
    [[nodiscard]] KvCacheStats getKvCacheStats() const;
    /// @brief The configuration the executor runs with.
    [[nodiscard]] ExecutorConfig const& getConfig() const;

private:
    class Impl;
    std::unique_ptr<Impl> mImpl;
};

} // namespace kiln
