#include "runtime/response_queue.h"

#include <algorithm>
#include <iterator>

namespace kiln
{

void ResponseQueue::expect(IdType id)
{
    std::lock_guard<std::mutex> lock(mMutex);
    mExpected.insert(id);
}

bool ResponseQueue::isExpected(IdType id) const
{
    std::lock_guard<std::mutex> lock(mMutex);
    return mExpected.count(id) != 0;
}

void ResponseQueue::push(std::vector<Response>&& responses)
{
    if (responses.empty())
    {
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (Response& response : responses)
        {
            if (response.isFinal)
            {
                mExpected.erase(response.requestId);
            }
            mResponses.push_back(std::move(response));
        }
    }
    mReady.notify_all();
}

std::vector<Response> ResponseQueue::take(std::optional<IdType> id, std::optional<std::chrono::milliseconds> timeout)
{
    auto matches = [&](Response const& r) { return !id || r.requestId == *id; };
    auto ready = [&] {
        bool const owed = id ? mExpected.count(*id) != 0 : !mExpected.empty();
        return !owed || std::any_of(mResponses.begin(), mResponses.end(), matches);
    };
    std::unique_lock<std::mutex> lock(mMutex);
    if (timeout)
    {
        mReady.wait_for(lock, *timeout, ready);
    }
    else
    {
        mReady.wait(lock, ready);
    }
    if (!id)
    {
        // Everything: swapped out under the lock, moved out after it, so the executor's next
        // push does not wait on the copy.
        std::deque<Response> all;
        all.swap(mResponses);
        lock.unlock();
        return {std::make_move_iterator(all.begin()), std::make_move_iterator(all.end())};
    }
    // Keep the others in order for their own waiters.
    auto const taken
        = std::stable_partition(mResponses.begin(), mResponses.end(), [&](Response const& r) { return !matches(r); });
    std::vector<Response> out(std::make_move_iterator(taken), std::make_move_iterator(mResponses.end()));
    mResponses.erase(taken, mResponses.end());
    return out;
}

} // namespace kiln
