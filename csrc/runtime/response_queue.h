#pragma once

#include "runtime/response.h"
#include "runtime/types.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_set>
#include <vector>

namespace kiln
{

/// @brief Responses waiting for their clients, and the requests still owed a final response.
/// Thread safe.
class ResponseQueue
{
public:
    ResponseQueue() = default;
    ResponseQueue(ResponseQueue const&) = delete;
    ResponseQueue& operator=(ResponseQueue const&) = delete;

    /// @brief Records that request `id` is owed a final response.
    void expect(IdType id);
    /// @brief Whether request `id` is still owed a final response.
    [[nodiscard]] bool isExpected(IdType id) const;
    /// @brief Queues responses (a final one settles its request) and wakes the waiters.
    void push(std::vector<Response>&& responses);
    /// @brief Takes the ready responses (only those of `id` when given), waiting up to `timeout`
    /// (forever when unset) for one; returns at once, empty, when no matching request is owed one.
    [[nodiscard]] std::vector<Response> take(
        std::optional<IdType> id, std::optional<std::chrono::milliseconds> timeout);

private:
    mutable std::mutex mMutex;
    std::condition_variable mReady;
    std::deque<Response> mResponses;
    std::unordered_set<IdType> mExpected;
};

} // namespace kiln
