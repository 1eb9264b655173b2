#pragma once

#include "runtime/allowed_tokens.h"
#include "runtime/json_object.h"
#include "runtime/types.h"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln
{

/// @brief A context-free grammar over UTF-8 bytes (kiln.runtime.grammar compiles EBNF into one):
/// a request whose output must be a sentence of it picks only tokens whose bytes keep one
/// reachable. Read only once built, and shared by the requests that use it.
///
/// Where the text read so far stands is a State: the set of parse stacks that fit it. A stack
/// holds positions in the rules' alternatives, its top (back) the byte set to match next and
/// the positions below it where the enclosing rules go on; the empty stack is a finished
/// sentence. The compiler keeps only rules that can finish and refuses left recursion, so every
/// stack can still end in a sentence and expanding one always stops.
class Grammar
{
public:
    /// An item of an alternative: a byte set (its index, >= 0) or a reference to rule r (~r).
    using Item = std::int32_t;
    using Alternative = std::vector<Item>;
    using Stack = std::vector<std::int32_t>;
    /// The stacks that fit the text read so far, sorted and distinct; empty: none does.
    using State = std::vector<Stack>;

    /// @brief `rules[r]`: rule r's alternatives (rule 0 the whole output); `byteSets`: 32 bytes
    /// each, bit b of byte b / 8 set where byte b is in the set. Throws std::invalid_argument on
    /// a malformed grammar or one with left recursion.
    Grammar(std::vector<std::vector<Alternative>> rules, std::vector<std::string> const& byteSets);

    [[nodiscard]] std::size_t numRules() const
    {
        return mAlternatives.size();
    }

    /// @brief The state before any text.
    [[nodiscard]] State const& start() const
    {
        return mStart;
    }

    /// @brief The state after `bytes` from `state` (empty when no sentence can follow). Throws
    /// std::runtime_error past kMaxStacks stacks.
    [[nodiscard]] State advance(State const& state, std::string_view bytes) const;

    /// @brief Whether the text read so far is a sentence.
    [[nodiscard]] static bool accepting(State const& state)
    {
        return !state.empty() && state.front().empty();
    }

    /// @brief Whether nothing may follow the text read so far.
    [[nodiscard]] static bool closed(State const& state)
    {
        return state.size() == 1 && state.front().empty();
    }

    /// @brief The tokens (ascending, ids below `vocabSize`) whose bytes in `table` lead from
    /// `state` to a live state (kept: AllowedTokens).
    [[nodiscard]] std::vector<TokenIdType> tokens(State const& state, TokenTable const& table, SizeType vocabSize) const;

    /// @brief A rule that can begin with itself (through rules that can match nothing), which
    /// would make expanding a stack never stop, found depth first from rule 0; -1 if none.
    [[nodiscard]] static std::int32_t leftRecursive(std::vector<std::vector<Alternative>> const& rules);

    /// @brief The most stacks a state may hold (a grammar ambiguous past it fails its request).
    static constexpr std::size_t kMaxStacks = 1024;

private:
    static constexpr std::int32_t kEnd = INT32_MIN; ///< ends an alternative in mItems

    /// Pushes onto `out` the stacks `stack` stands for with a byte set on top (rule references
    /// on top replaced by their alternatives, finished alternatives popped).
    void expand(Stack stack, State& out) const;
    [[nodiscard]] State step(State const& state, unsigned char byte) const;
    [[nodiscard]] bool matches(std::int32_t position, unsigned char byte) const;
    /// The tokens of `table` whose bytes lead from `state` to a live state.
    [[nodiscard]] std::vector<TokenIdType> walkTokens(State const& state, TokenTable const& table) const;

    std::vector<Item> mItems;                          ///< every alternative's items, each ended by kEnd
    std::vector<std::vector<std::int32_t>> mAlternatives; ///< per rule, where its alternatives start in mItems
    std::vector<std::array<std::uint64_t, 4>> mByteSets;
    State mStart;
    AllowedTokens<State> mTokens;
};

} // namespace kiln
