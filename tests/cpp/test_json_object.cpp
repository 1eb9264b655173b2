#include "runtime/json_object.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

using kiln::JsonObjectPrefix;
using kiln::TokenIdType;
using kiln::TokenTable;

namespace
{

/// How many bytes of `text` feed before one fails (text.size() when all do), and whether the
/// object is then complete.
std::pair<std::size_t, bool> read(std::string const& text)
{
    JsonObjectPrefix state;
    for (std::size_t i = 0; i < text.size(); ++i)
    {
        if (!state.feed(static_cast<unsigned char>(text[i])))
        {
            return {i, false};
        }
    }
    return {text.size(), state.complete()};
}

} // namespace

TEST(JsonObjectPrefix, EveryPrefixOfAnObjectFeedsAndOnlyTheWholeIsComplete)
{
    std::vector<std::string> const objects = {
        "{}",
        "{\"a\":1}",
        " \n{ \"a\" : [1, -2.5e+3, 0, -0, 0.25, 1E5, 7e-2, true, false, null, \"x\\u00e9\\n\\\"\\\\\\/\\b\\f\\r\\t\","
        " {\"b\": [], \"c\": {}}] }",
        "{\"k\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}", // e-acute, euro sign, an emoji in UTF-8
        "{\"\":[[[]]],\"n\":[{\"m\":null}]}",
    };
    for (std::string const& object : objects)
    {
        JsonObjectPrefix state;
        for (std::size_t i = 0; i < object.size(); ++i)
        {
            ASSERT_TRUE(state.feed(static_cast<unsigned char>(object[i]))) << object << " at byte " << i;
            EXPECT_EQ(state.complete(), i + 1 == object.size()) << object << " at byte " << i;
        }
    }
}

TEST(JsonObjectPrefix, RefusesTheFirstByteThatCannotContinueAnObject)
{
    struct Case
    {
        std::string text;
        std::size_t failsAt;
    };
    std::vector<Case> const cases = {
        {"[]", 0},                    // the top-level value must be an object
        {"\"a\"", 0},
        {"{\"a\"}", 4},               // a key needs its colon
        {"{\"a\":01}", 6},            // no leading zeros
        {"{\"a\":1.}", 7},            // a fraction needs a digit
        {"{\"a\":1e}", 7},
        {"{\"a\":-}", 6},
        {"{\"a\":tru}", 8},
        {"{\"a\":nul1}", 8},
        {"{\"a\":\"\x01\"}", 6},      // raw control characters are not allowed in strings
        {"{\"a\":\"\\q\"}", 7},       // nor unknown escapes
        {"{\"a\":\"\\u12g4\"}", 10},
        {"{,}", 1},
        {"{\"a\":1,}", 7},
        {"{\"a\":[1,]}", 8},
        {"{\"a\":[1}", 7},            // brackets must match
        {"{\"a\":1]}", 6},
        {"{\"a\":1}}", 7},            // nothing after the object
        {"{\"a\":1} ", 7},
        {"{1:2}", 1},                 // keys are strings
        {"{\"a\":\"\xc0\xaf\"}", 6},  // an overlong UTF-8 lead byte
        {"{\"a\":\"\xc3(\"}", 7},     // a missing continuation byte
        {"{\"a\":\"\xf5\x80\x80\x80\"}", 6},
    };
    for (Case const& c : cases)
    {
        auto const [fed, complete] = read(c.text);
        EXPECT_EQ(fed, c.failsAt) << c.text;
        EXPECT_FALSE(complete) << c.text;
    }
}

TEST(JsonObjectPrefix, NestsUpToTheDepthLimit)
{
    std::string deep = "{\"a\":" + std::string(kiln::kMaxJsonDepth - 1, '[');
    EXPECT_EQ(read(deep).first, deep.size());
    deep += '[';
    EXPECT_EQ(read(deep).first, deep.size() - 1);
    std::string closed = "{\"a\":" + std::string(kiln::kMaxJsonDepth - 1, '[') + std::string(kiln::kMaxJsonDepth - 1, ']') + "}";
    EXPECT_EQ(read(closed), std::make_pair(closed.size(), true));
}

TEST(JsonObjectPrefix, TakesWhitespaceBetweenTokensInRunsOfAtMostTheLimit)
{
    std::string const run(kiln::kMaxJsonWhitespace, ' ');
    std::string const text = run + "{" + run + "\"a\"" + run + ":" + run + "[" + run + "1" + run + "]" + run + "}";
    EXPECT_EQ(read(text), std::make_pair(text.size(), true));
    EXPECT_EQ(read(run + " {").first, run.size()); // one more in a row is refused
    std::string const afterNumber = "{\"a\": 12" + run + "\n";
    EXPECT_EQ(read(afterNumber).first, afterNumber.size() - 1);
    std::string const inString = "{\"a\": \"" + run + run + "\"}"; // a string's spaces are its text
    EXPECT_EQ(read(inString), std::make_pair(inString.size(), true));
}

TEST(JsonTokens, KeepsTheTokensWhoseBytesAllContinueTheObject)
{
    TokenTable const table({"{", "}", "\"", "a", ":", "1", " ", "", "}\n", "{\"", "x", "1}", ",\"b"});
    JsonObjectPrefix state;
    EXPECT_EQ(kiln::jsonTokens(state, table, 13), (std::vector<TokenIdType>{0, 6, 9}));
    ASSERT_TRUE(state.feed(std::string_view("{\"a\":1")));
    // "}" and "1}" close it ("}\n" would put a byte after it); the empty entry never counts.
    EXPECT_EQ(kiln::jsonTokens(state, table, 13), (std::vector<TokenIdType>{1, 5, 6, 11, 12}));
    // Ids past the vocabulary, or past the table, are left out.
    EXPECT_EQ(kiln::jsonTokens(state, table, 6), (std::vector<TokenIdType>{1, 5}));
    EXPECT_EQ(kiln::jsonTokens(state, table, 40), (std::vector<TokenIdType>{1, 5, 6, 11, 12}));
    ASSERT_TRUE(state.feed(std::string_view("}")));
    EXPECT_TRUE(state.complete());
    EXPECT_TRUE(kiln::jsonTokens(state, table, 13).empty());
}

TEST(JsonTokens, EqualFeedingEveryTokenFromEveryPrefix)
{
    // A vocabulary of random pieces over JSON's bytes, plain text, escapes and UTF-8 (whole and
    // split characters), against the naive rule at every prefix of a few objects.
    std::vector<std::string> const alphabet = {"{", "}", "[", "]", "\"", ":", ",", " ", "\n", "\\", "u", "0", "7",
        "-", ".", "e", "+", "t", "r", "n", "a", "l", "f", "s", "x", "\xc3", "\xa9", "\xe2\x82\xac", "\x01", "/"};
    std::mt19937 rng(7);
    std::vector<std::string> pieces{""};
    for (int i = 0; i < 3000; ++i)
    {
        std::string piece;
        for (int j = 0, n = 1 + static_cast<int>(rng() % 5); j < n; ++j)
        {
            piece += alphabet[rng() % alphabet.size()];
        }
        pieces.push_back(piece);
    }
    TokenTable const table(pieces);
    std::vector<std::string> const texts = {"{\"a\": [1, -2.5e+3, true, null, \"x\\u00e9\\n\"], \"b\": {}}",
        "{\"k\":\"caf\xc3\xa9 \xe2\x82\xac\", \"n\":-0.5}"};
    for (std::string const& text : texts)
    {
        JsonObjectPrefix state;
        for (std::size_t i = 0; i <= text.size(); ++i)
        {
            std::vector<TokenIdType> naive;
            for (std::size_t t = 0; t < pieces.size(); ++t)
            {
                JsonObjectPrefix next = state;
                if (!pieces[t].empty() && next.feed(pieces[t]))
                {
                    naive.push_back(static_cast<TokenIdType>(t));
                }
            }
            EXPECT_EQ(kiln::jsonTokens(state, table, static_cast<kiln::SizeType>(pieces.size())), naive)
                << text.substr(0, i);
            if (i < text.size())
            {
                ASSERT_TRUE(state.feed(static_cast<unsigned char>(text[i])));
            }
        }
    }
}
