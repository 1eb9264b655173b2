#pragma once

#include "runtime/allowed_tokens.h"
#include "runtime/json_object.h"
#include "runtime/types.h"

#include <cstdint>
#include <string_view>
#include <vector>

namespace kiln
{

/// @brief A deterministic automaton over UTF-8 bytes (kiln.runtime.regex compiles a pattern into
/// one): a request whose output must match the pattern picks only tokens whose bytes lead from
/// its state to a state that can still reach a match. Read only once built, and shared by the
/// requests that use it.
class RegexDfa
{
public:
    static constexpr std::int32_t kDead = -1;

    /// @brief `next`: [states x 256] the state after each byte (kDead: none); state 0 starts.
    /// Throws std::invalid_argument on a malformed table.
    RegexDfa(std::vector<std::int32_t> next, std::vector<bool> accepting);

    [[nodiscard]] std::int32_t numStates() const
    {
        return static_cast<std::int32_t>(mAccepting.size());
    }

    /// @brief The state after `bytes` from `state`, or kDead.
    [[nodiscard]] std::int32_t walk(std::int32_t state, std::string_view bytes) const;

    /// @brief Whether the text read so far matches.
    [[nodiscard]] bool accepting(std::int32_t state) const
    {
        return mAccepting[static_cast<std::size_t>(state)];
    }

    /// @brief Whether nothing may follow the text read so far.
    [[nodiscard]] bool closed(std::int32_t state) const
    {
        return mClosed[static_cast<std::size_t>(state)];
    }

    /// @brief The tokens (ascending, ids below `vocabSize`) whose bytes in `table` lead from
    /// `state` to a live state (kept: AllowedTokens).
    [[nodiscard]] std::vector<TokenIdType> tokens(std::int32_t state, TokenTable const& table, SizeType vocabSize) const;

private:
    std::vector<std::int32_t> mNext;
    std::vector<bool> mAccepting;
    std::vector<bool> mClosed;
    AllowedTokens<std::int32_t> mTokens;
};

} // namespace kiln
