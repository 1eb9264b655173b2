#include "runtime/grammar.h"

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace kiln
{
std::int32_t Grammar::leftRecursive(std::vector<std::vector<Alternative>> const& rules)
{
    std::vector<bool> nullable(rules.size(), false);
    for (bool changed = true; changed;)
    {
        changed = false;
        for (std::size_t r = 0; r < rules.size(); ++r)
        {
            if (nullable[r])
            {
                continue;
            }
            for (auto const& alt : rules[r])
            {
                if (std::all_of(alt.begin(), alt.end(),
                        [&nullable](Grammar::Item i) { return i < 0 && nullable[static_cast<std::size_t>(~i)]; }))
                {
                    nullable[r] = changed = true;
                    break;
                }
            }
        }
    }
    // The rules each rule can begin with; then a depth-first search for a cycle among them.
    std::vector<std::vector<std::size_t>> first(rules.size());
    for (std::size_t r = 0; r < rules.size(); ++r)
    {
        for (auto const& alt : rules[r])
        {
            for (Grammar::Item const i : alt)
            {
                if (i >= 0)
                {
                    break;
                }
                first[r].push_back(static_cast<std::size_t>(~i));
                if (!nullable[static_cast<std::size_t>(~i)])
                {
                    break;
                }
            }
        }
    }
    enum : std::uint8_t
    {
        kNew,
        kOpen,
        kDone
    };
    std::vector<std::uint8_t> mark(rules.size(), kNew);
    for (std::size_t root = 0; root < rules.size(); ++root)
    {
        if (mark[root] != kNew)
        {
            continue;
        }
        std::vector<std::pair<std::size_t, std::size_t>> path{{root, 0}}; // rule, next edge
        mark[root] = kOpen;
        while (!path.empty())
        {
            auto& [r, e] = path.back();
            if (e == first[r].size())
            {
                mark[r] = kDone;
                path.pop_back();
                continue;
            }
            std::size_t const next = first[r][e++];
            if (mark[next] == kOpen)
            {
                return static_cast<std::int32_t>(next);
            }
            if (mark[next] == kNew)
            {
                mark[next] = kOpen;
                path.emplace_back(next, 0);
            }
        }
    }
    return -1;
}

namespace
{

void normalize(Grammar::State& state)
{
    std::sort(state.begin(), state.end());
    state.erase(std::unique(state.begin(), state.end()), state.end());
    if (state.size() > Grammar::kMaxStacks)
    {
        throw std::runtime_error("the grammar is ambiguous past " + std::to_string(Grammar::kMaxStacks)
            + " parses at once here; make its alternatives tell themselves apart sooner");
    }
}

} // namespace

Grammar::Grammar(std::vector<std::vector<Alternative>> rules, std::vector<std::string> const& byteSets)
{
    if (rules.empty())
    {
        throw std::invalid_argument("a grammar needs at least one rule");
    }
    for (std::string const& set : byteSets)
    {
        if (set.size() != 32)
        {
            throw std::invalid_argument("a grammar's byte set is 32 bytes, got " + std::to_string(set.size()));
        }
        std::array<std::uint64_t, 4> bits{};
        for (std::size_t b = 0; b < 256; ++b)
        {
            if ((static_cast<unsigned char>(set[b / 8]) >> (b % 8)) & 1U)
            {
                bits[b / 64] |= std::uint64_t{1} << (b % 64);
            }
        }
        mByteSets.push_back(bits);
    }
    for (std::size_t r = 0; r < rules.size(); ++r)
    {
        if (rules[r].empty())
        {
            throw std::invalid_argument("grammar rule " + std::to_string(r) + " has no alternative");
        }
        for (auto const& alt : rules[r])
        {
            for (Item const i : alt)
            {
                if (i == kEnd || (i >= 0 && static_cast<std::size_t>(i) >= mByteSets.size())
                    || (i < 0 && static_cast<std::size_t>(~i) >= rules.size()))
                {
                    throw std::invalid_argument("grammar rule " + std::to_string(r) + " refers to no byte set or rule ("
                        + std::to_string(i) + ")");
                }
            }
        }
    }
    if (std::int32_t const r = leftRecursive(rules); r >= 0)
    {
        throw std::invalid_argument("grammar rule " + std::to_string(r) + " is left-recursive");
    }
    for (auto const& alternatives : rules)
    {
        std::vector<std::int32_t>& starts = mAlternatives.emplace_back();
        for (auto const& alt : alternatives)
        {
            starts.push_back(static_cast<std::int32_t>(mItems.size()));
            mItems.insert(mItems.end(), alt.begin(), alt.end());
            mItems.push_back(kEnd);
        }
    }
    // The whole output is rule 0 followed by nothing: a stack with an item that refers to it.
    std::int32_t const root = static_cast<std::int32_t>(mItems.size());
    mItems.push_back(~0);
    mItems.push_back(kEnd);
    expand(Stack{root}, mStart);
    normalize(mStart);
}

bool Grammar::matches(std::int32_t position, unsigned char byte) const
{
    auto const& set = mByteSets[static_cast<std::size_t>(mItems[static_cast<std::size_t>(position)])];
    return (set[byte / 64] >> (byte % 64)) & 1U;
}

void Grammar::expand(Stack stack, State& out) const
{
    if (stack.empty() || mItems[static_cast<std::size_t>(stack.back())] >= 0)
    {
        out.push_back(std::move(stack));
        return;
    }
    std::int32_t const at = stack.back();
    auto const rule = static_cast<std::size_t>(~mItems[static_cast<std::size_t>(at)]);
    stack.pop_back();
    if (mItems[static_cast<std::size_t>(at) + 1] != kEnd)
    {
        stack.push_back(at + 1); // where this alternative goes on after the rule
    }
    for (std::int32_t const start : mAlternatives[rule])
    {
        Stack next = stack;
        if (mItems[static_cast<std::size_t>(start)] != kEnd)
        {
            next.push_back(start);
        }
        expand(std::move(next), out);
    }
}

Grammar::State Grammar::step(State const& state, unsigned char byte) const
{
    State out;
    for (Stack const& stack : state)
    {
        if (stack.empty() || !matches(stack.back(), byte))
        {
            continue;
        }
        Stack next(stack.begin(), stack.end() - 1);
        if (mItems[static_cast<std::size_t>(stack.back()) + 1] != kEnd)
        {
            next.push_back(stack.back() + 1);
        }
        expand(std::move(next), out);
    }
    normalize(out);
    return out;
}

Grammar::State Grammar::advance(State const& state, std::string_view bytes) const
{
    State out = state;
    for (char const c : bytes)
    {
        if (out.empty())
        {
            break;
        }
        out = step(out, static_cast<unsigned char>(c));
    }
    return out;
}

std::vector<TokenIdType> Grammar::tokens(State const& state, TokenTable const& table, SizeType vocabSize) const
{
    return mTokens.get(table, state, vocabSize, [&] { return walkTokens(state, table); });
}

std::vector<TokenIdType> Grammar::walkTokens(State const& state, TokenTable const& table) const
{
    // The tokens in bytewise order, each walked on from the longest prefix it shares with the
    // walk before (whose states are kept by length); a prefix no sentence can follow skips
    // every token that begins with it. The states met on the way are numbered and each step
    // between them taken once: inside a string most bytes lead back to the state they left, so
    // most steps are a lookup.
    std::map<State, std::int32_t> number{{state, 0}};
    std::vector<State const*> met{&number.begin()->first}; // by number
    std::unordered_map<std::uint64_t, std::int32_t> steps; // (state << 8 | byte) -> state, -1: none
    auto const next = [&](std::int32_t from, unsigned char byte) {
        auto const key = (static_cast<std::uint64_t>(from) << 8) | byte;
        if (auto const it = steps.find(key); it != steps.end())
        {
            return it->second;
        }
        State to = step(*met[static_cast<std::size_t>(from)], byte);
        std::int32_t id = -1;
        if (!to.empty())
        {
            auto const [it, fresh] = number.try_emplace(std::move(to), static_cast<std::int32_t>(met.size()));
            if (fresh)
            {
                met.push_back(&it->first);
            }
            id = it->second;
        }
        steps.emplace(key, id);
        return id;
    };
    std::vector<TokenIdType> out;
    std::vector<std::int32_t> after{0}; // after[n]: the state after the first n bytes of `path`
    std::string path;
    std::string dead; // a prefix no sentence continues ("": none yet)
    for (TokenIdType const id : table.byBytes)
    {
        std::string const& bytes = table.bytes[static_cast<std::size_t>(id)];
        if (!dead.empty() && bytes.compare(0, dead.size(), dead) == 0)
        {
            continue;
        }
        std::size_t shared = 0;
        while (shared < path.size() && shared < bytes.size() && path[shared] == bytes[shared])
        {
            ++shared;
        }
        path.resize(shared);
        after.resize(shared + 1);
        bool live = true;
        for (std::size_t i = shared; i < bytes.size(); ++i)
        {
            std::int32_t const to = next(after.back(), static_cast<unsigned char>(bytes[i]));
            if (to < 0)
            {
                dead = bytes.substr(0, i + 1);
                live = false;
                break;
            }
            after.push_back(to);
            path.push_back(bytes[i]);
        }
        if (live)
        {
            out.push_back(id);
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

} // namespace kiln
