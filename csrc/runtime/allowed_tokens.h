#pragma once

#include "runtime/json_object.h"
#include "runtime/types.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace kiln
{

/// @brief The tokens an output guide (a regex automaton, a grammar) allows from each of its
/// states, worked out once per state and token table over the whole table and kept, up to
/// kMaxIds ids in all (past that, worked out each time); each caller gets those below its
/// vocabulary size. Safe to share between threads.
template <typename State>
class AllowedTokens
{
public:
    /// @brief The most token ids kept (64 MiB).
    static constexpr std::size_t kMaxIds = std::size_t{16} << 20;

    /// @brief The kept tokens of `state`, or `compute()`'s (ascending ids), kept if they fit.
    template <typename Compute>
    [[nodiscard]] std::vector<TokenIdType> get(
        TokenTable const& table, State const& state, SizeType vocabSize, Compute&& compute) const
    {
        auto const below = [vocabSize](std::vector<TokenIdType> const& ids) {
            return std::vector<TokenIdType>(ids.begin(), std::lower_bound(ids.begin(), ids.end(), vocabSize));
        };
        {
            std::lock_guard<std::mutex> lock(mMutex);
            auto const it = mIds.find({table.serial, state});
            if (it != mIds.end())
            {
                return below(it->second);
            }
        }
        std::vector<TokenIdType> ids = compute();
        std::lock_guard<std::mutex> lock(mMutex);
        if (mCount + ids.size() <= kMaxIds && mIds.try_emplace({table.serial, state}, ids).second)
        {
            mCount += ids.size();
        }
        return below(ids);
    }

private:
    mutable std::mutex mMutex;
    mutable std::map<std::pair<std::uint64_t, State>, std::vector<TokenIdType>> mIds; ///< by table serial, state
    mutable std::size_t mCount = 0;
};

} // namespace kiln
