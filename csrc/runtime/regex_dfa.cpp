#include "runtime/regex_dfa.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace kiln
{

RegexDfa::RegexDfa(std::vector<std::int32_t> next, std::vector<bool> accepting)
    : mNext(std::move(next))
    , mAccepting(std::move(accepting))
{
    auto const n = static_cast<std::int64_t>(mAccepting.size());
    if (n < 1 || static_cast<std::int64_t>(mNext.size()) != n * 256)
    {
        throw std::invalid_argument("a regex automaton needs at least one state and 256 transitions a state, got "
            + std::to_string(n) + " states and " + std::to_string(mNext.size()) + " transitions");
    }
    if (std::any_of(mNext.begin(), mNext.end(), [n](std::int32_t t) { return t < kDead || t >= n; }))
    {
        throw std::invalid_argument("a regex automaton's transition leads outside its states");
    }
    mClosed.resize(mAccepting.size());
    for (std::size_t s = 0; s < mAccepting.size(); ++s)
    {
        auto const row = mNext.begin() + static_cast<std::ptrdiff_t>(s * 256);
        mClosed[s] = std::all_of(row, row + 256, [](std::int32_t t) { return t == kDead; });
    }
}

std::int32_t RegexDfa::walk(std::int32_t state, std::string_view bytes) const
{
    for (char const c : bytes)
    {
        if (state == kDead)
        {
            return kDead;
        }
        state = mNext[static_cast<std::size_t>(state) * 256 + static_cast<unsigned char>(c)];
    }
    return state;
}

std::vector<TokenIdType> RegexDfa::tokens(std::int32_t state, TokenTable const& table, SizeType vocabSize) const
{
    return mTokens.get(table, state, vocabSize, [&] {
        std::vector<TokenIdType> out;
        for (std::size_t t = 0; t < table.bytes.size(); ++t)
        {
            std::string const& bytes = table.bytes[t];
            if (!bytes.empty() && walk(state, bytes) != kDead)
            {
                out.push_back(static_cast<TokenIdType>(t));
            }
        }
        return out;
    });
}

} // namespace kiln
