#include "runtime/grammar.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using kiln::Grammar;
using kiln::TokenIdType;
using kiln::TokenTable;

namespace
{

/// A 32-byte set of the given bytes, as kiln.runtime.grammar writes one.
std::string byteSet(std::string const& bytes)
{
    std::string set(32, '\0');
    for (char const c : bytes)
    {
        auto const b = static_cast<unsigned char>(c);
        set[b / 8] = static_cast<char>(static_cast<unsigned char>(set[b / 8]) | (1U << (b % 8)));
    }
    return set;
}

/// root ::= "" | "(" root ")" root, with set 0 "(" and set 1 ")".
Grammar balanced()
{
    return Grammar({{{}, {0, ~0, 1, ~0}}}, {byteSet("("), byteSet(")")});
}

bool isBalanced(std::string const& text)
{
    int depth = 0;
    for (char const c : text)
    {
        depth += c == '(' ? 1 : -1;
        if (depth < 0)
        {
            return false;
        }
    }
    return depth == 0;
}

} // namespace

TEST(Grammar, AcceptsExactlyTheBalancedParentheses)
{
    Grammar const g = balanced();
    std::mt19937 rng(5);
    for (int i = 0; i < 2000; ++i)
    {
        std::string text;
        for (std::size_t n = rng() % 12; n > 0; --n)
        {
            text += rng() % 2 ? '(' : ')';
        }
        Grammar::State const s = g.advance(g.start(), text);
        EXPECT_EQ(Grammar::accepting(s), isBalanced(text)) << text;
        // A live state is a prefix of a balanced text: never more ')' than '(' so far.
        bool prefix = true;
        int depth = 0;
        for (char const c : text)
        {
            depth += c == '(' ? 1 : -1;
            prefix = prefix && depth >= 0;
        }
        EXPECT_EQ(!s.empty(), prefix) << text;
    }
    EXPECT_FALSE(Grammar::closed(g.start()));
    EXPECT_TRUE(g.advance(g.start(), "x").empty());
}

TEST(Grammar, TokensAreThoseWhoseBytesKeepASentenceReachable)
{
    Grammar const g = balanced();
    std::vector<std::string> vocab{"(", ")", "((", "()", ")(", "))", "(()", "x", "", "())", "(((", "()()"};
    TokenTable const table(vocab);
    for (std::string const prefix : {"", "(", "((", "()"})
    {
        Grammar::State const s = g.advance(g.start(), prefix);
        std::vector<TokenIdType> want;
        for (std::size_t t = 0; t < vocab.size(); ++t)
        {
            if (!vocab[t].empty() && !g.advance(s, vocab[t]).empty())
            {
                want.push_back(static_cast<TokenIdType>(t));
            }
        }
        EXPECT_EQ(g.tokens(s, table, static_cast<int>(vocab.size())), want) << prefix;
        EXPECT_EQ(g.tokens(s, table, 3), std::vector<TokenIdType>(want.begin(), std::lower_bound(want.begin(), want.end(), 3)));
    }
}

TEST(Grammar, RefusesLeftRecursionAndBadReferences)
{
    // root ::= a "x"; a ::= "" | root: root can begin with itself through a.
    EXPECT_THROW(Grammar({{{~1, 0}}, {{}, {~0}}}, {byteSet("x")}), std::invalid_argument);
    EXPECT_THROW(Grammar({{{2}}}, {byteSet("x")}), std::invalid_argument);
    EXPECT_THROW(Grammar({{{~1}}}, {byteSet("x")}), std::invalid_argument);
    EXPECT_THROW(Grammar({{}}, {byteSet("x")}), std::invalid_argument);
    EXPECT_THROW(Grammar({{{0}}}, {std::string(31, '\0')}), std::invalid_argument);
}

TEST(Grammar, AmbiguityPastTheLimitThrows)
{
    // root ::= "x" root "y" | "x" root "z" | "": 3 * 2^k parses after k "x"s.
    Grammar const g({{{0, ~0, 1}, {0, ~0, 2}, {}}}, {byteSet("x"), byteSet("y"), byteSet("z")});
    EXPECT_EQ(g.advance(g.start(), "xxxxxxxx").size(), 3U << 8);
    EXPECT_THROW((void) g.advance(g.start(), "xxxxxxxxx"), std::runtime_error);
}
