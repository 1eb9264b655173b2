#include "runtime/json_object.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

using kiln::JsonObjectPrefix;
using kiln::TokenIdType;
using kiln::TokenTable;

namespace
{

/// 3000 random pieces of 1 to `longest` strings of `alphabet` each, after an empty one.
std::vector<std::string> randomPieces(std::vector<std::string> const& alphabet, unsigned seed, unsigned longest)
{
    std::mt19937 rng(seed);
    std::vector<std::string> pieces{""};
    for (int i = 0; i < 3000; ++i)
    {
        std::string piece;
        for (unsigned j = 0, n = 1 + static_cast<unsigned>(rng() % longest); j < n; ++j)
        {
            piece += alphabet[rng() % alphabet.size()];
        }
        pieces.push_back(piece);
    }
    return pieces;
}

/// At every prefix of `text` read into `state`, jsonTokens equals the naive rule: every piece
/// whose bytes all feed.
void expectTokensOfEveryPrefix(JsonObjectPrefix state, std::vector<std::string> const& pieces, std::string const& text)
{
    TokenTable const table(pieces);
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
        {"{\"a\":\"\xe0\x9f\xbf\"}", 7},      // an overlong 3-byte form
        {"{\"a\":\"\xed\xa0\x80\"}", 7},      // a UTF-16 surrogate
        {"{\"a\":\"\xf0\x8f\xbf\xbf\"}", 7}, // an overlong 4-byte form
        {"{\"a\":\"\xf4\x90\x80\x80\"}", 7}, // past U+10FFFF
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
    std::vector<std::string> const pieces = randomPieces(alphabet, 7, 5);
    for (std::string const text : {"{\"a\": [1, -2.5e+3, true, null, \"x\\u00e9\\n\"], \"b\": {}}",
             "{\"k\":\"caf\xc3\xa9 \xe2\x82\xac\", \"n\":-0.5}"})
    {
        expectTokensOfEveryPrefix(JsonObjectPrefix(), pieces, text);
    }
}

namespace
{

using kiln::JsonSchema;
using kiln::JsonSchemaNode;

JsonSchemaNode kinds(std::uint8_t k)
{
    JsonSchemaNode n;
    n.kinds = k;
    return n;
}

/// {"name": string of at most 8 characters, "age": integer, "tags": [string, 1 to 2 of them],
/// "color": "red" or "green", "ok": boolean or null}, name and age required, no other property.
std::shared_ptr<JsonSchema const> person()
{
    std::vector<JsonSchemaNode> nodes(8);
    nodes[0] = kinds(JsonSchemaNode::kObject);
    nodes[0].names = {"age", "color", "name", "ok", "tags"};
    nodes[0].properties = {1, 2, 3, 4, 5};
    nodes[0].required = 0b101;
    nodes[1] = kinds(JsonSchemaNode::kInteger);
    nodes[2].literals = {"\"green\"", "\"red\""};
    nodes[3] = kinds(JsonSchemaNode::kString);
    nodes[3].maxLength = 8;
    nodes[4].anyOf = {6, 7};
    nodes[5] = kinds(JsonSchemaNode::kArray);
    nodes[5].items = 3;
    nodes[5].minItems = 1;
    nodes[5].maxItems = 2;
    nodes[6] = kinds(JsonSchemaNode::kBoolean);
    nodes[7] = kinds(JsonSchemaNode::kNull);
    return std::make_shared<JsonSchema const>(std::move(nodes));
}

std::pair<std::size_t, bool> readWith(JsonSchema const& schema, std::string const& text)
{
    JsonObjectPrefix state(&schema);
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

TEST(JsonSchemaPrefix, TakesValuesOfTheSchemaWhole)
{
    auto const schema = person();
    for (std::string const text : {"{\"name\":\"x\",\"age\":3}",
             " { \"age\" : -12 , \"name\" : \"a b\", \"tags\": [\"a\", \"b\"], \"color\": \"red\", \"ok\": null }",
             "{\"ok\":true,\"color\":\"green\",\"name\":\"\\u00e9\",\"tags\":[\"\"],\"age\":0}"})
    {
        JsonObjectPrefix state(schema.get());
        for (std::size_t i = 0; i < text.size(); ++i)
        {
            ASSERT_TRUE(state.feed(static_cast<unsigned char>(text[i]))) << text << " at byte " << i;
            EXPECT_EQ(state.complete(), i + 1 == text.size()) << text << " at byte " << i;
        }
    }
}

TEST(JsonSchemaPrefix, RefusesTheFirstByteOutsideTheSchema)
{
    auto const schema = person();
    struct Case
    {
        std::string text;
        std::size_t failsAt;
    };
    std::vector<Case> const cases = {
        {"[]", 0},                                   // the top-level value is an object
        {"{\"nme\":", 3},                            // no such property
        {"{\"extra\":1}", 2},
        {"{\"name\":\"x\",\"name\":", 13},           // a property twice
        {"{\"name\":1}", 8},                         // a string is due
        {"{\"age\":1.5}", 8},                        // an integer: no fraction
        {"{\"age\":1e3}", 8},                        // nor exponent
        {"{\"name\":\"x\"}", 11},                    // age is required
        {"{\"color\":\"blue\"}", 10},                // not one of the literals
        {"{\"color\":\"red\"x", 14},
        {"{\"ok\":1}", 6},                           // neither boolean nor null
        {"{\"tags\":[]}", 9},                        // at least one item
        {"{\"tags\":[\"a\",\"b\",", 16},             // at most two
        {"{\"tags\":[1]}", 9},                       // items are strings
        {"{\"age\":1,\"color\":\"red\",\"name\":\"n\",\"ok\":null,\"tags\":[\"t\"],", 56}, // none left
    };
    for (Case const& c : cases)
    {
        auto const [fed, complete] = readWith(*schema, c.text);
        EXPECT_EQ(fed, c.failsAt) << c.text;
        EXPECT_FALSE(complete) << c.text;
    }
}

TEST(JsonSchemaPrefix, OtherPropertiesTakeTheirNodeAndAnyNodeTakesAnything)
{
    std::vector<JsonSchemaNode> nodes(3);
    nodes[0] = kinds(JsonSchemaNode::kObject);
    nodes[0].names = {"a"};
    nodes[0].properties = {JsonSchemaNode::kAny};
    nodes[0].additional = 1;
    nodes[1] = kinds(JsonSchemaNode::kArray);
    nodes[1].items = 2;
    nodes[2] = kinds(JsonSchemaNode::kNumber | JsonSchemaNode::kNull);
    JsonSchema const schema(std::move(nodes));
    EXPECT_EQ(readWith(schema, "{\"a\":{\"x\":[true]},\"ab\":[1.5,null],\"b\":[]}"), std::make_pair(std::size_t{41}, true));
    EXPECT_EQ(readWith(schema, "{\"b\":[\"x\"]}").first, 6u);
    EXPECT_EQ(readWith(schema, "{\"a\":1,\"a\":").first, 9u); // declared, and read already

    std::vector<JsonSchemaNode> array(1, kinds(JsonSchemaNode::kArray));
    JsonSchema const anyArray(std::move(array));
    EXPECT_EQ(readWith(anyArray, "[1, {\"k\": [null]}, \"s\"]"), std::make_pair(std::size_t{23}, true));
    EXPECT_EQ(readWith(anyArray, "{").first, 0u);
}

TEST(JsonSchemaPrefix, CountsAStringsCharactersAgainstItsLengths)
{
    std::vector<JsonSchemaNode> nodes(2);
    nodes[0] = kinds(JsonSchemaNode::kObject);
    nodes[0].names = {"s"};
    nodes[0].properties = {1};
    nodes[1] = kinds(JsonSchemaNode::kString);
    nodes[1].minLength = 2;
    nodes[1].maxLength = 3;
    JsonSchema const schema(std::move(nodes));
    auto const whole = [&](std::string const& text) { return readWith(schema, text) == std::make_pair(text.size(), true); };
    EXPECT_TRUE(whole("{\"s\":\"ab\"}"));
    EXPECT_TRUE(whole("{\"s\":\"abc\"}"));
    EXPECT_TRUE(whole("{\"s\":\"\\n\\u0041\"}"));           // an escape is one character
    EXPECT_TRUE(whole("{\"s\":\"\xc3\xa9\xe2\x82\xac\"}"));   // and a UTF-8 character one
    EXPECT_TRUE(whole("{\"s\":\"\\ud83d\\ude00x\"}"));     // a surrogate pair of escapes one
    EXPECT_EQ(readWith(schema, "{\"s\":\"a\"}").first, 7u);     // too short: not closed
    EXPECT_EQ(readWith(schema, "{\"s\":\"\\ud83d\\ude00\"}").first, 18u);
    EXPECT_EQ(readWith(schema, "{\"s\":\"abcd\"}").first, 9u);  // the fourth is refused
    // A pair's second escape is not begun at the last character left (its escape counts until
    // the pair is whole), so the limit is never passed.
    EXPECT_EQ(readWith(schema, "{\"s\":\"ab\\ud83d\\ude00\"}").first, 14u);
    // Keys are not counted.
    std::vector<JsonSchemaNode> free(2);
    free[0] = kinds(JsonSchemaNode::kObject);
    free[0].additional = 1;
    free[1] = kinds(JsonSchemaNode::kString);
    free[1].maxLength = 1;
    JsonSchema const anyKeys(std::move(free));
    EXPECT_TRUE(readWith(anyKeys, "{\"long key\":\"x\"}").second);
}

TEST(JsonSchema, RefusesNodesItCannotRead)
{
    auto const refused = [](std::vector<JsonSchemaNode> nodes, std::string const& why) {
        try
        {
            JsonSchema const schema(std::move(nodes));
            ADD_FAILURE() << "accepted; expected: " << why;
        }
        catch (std::invalid_argument const& e)
        {
            EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what() << " (expected: " << why << ")";
        }
    };
    refused({}, "at least its top-level node");
    refused({kinds(JsonSchemaNode::kString)}, "an object or an array");
    JsonSchemaNode unsorted = kinds(JsonSchemaNode::kObject);
    unsorted.names = {"b", "a"};
    unsorted.properties = {-1, -1};
    refused({unsorted}, "sorted and unique");
    JsonSchemaNode union_;
    union_.anyOf = {2, 3};
    refused({kinds(JsonSchemaNode::kObject), union_, kinds(JsonSchemaNode::kNumber), kinds(JsonSchemaNode::kInteger)},
        "may begin with the same byte");
    JsonSchemaNode missing = kinds(JsonSchemaNode::kObject);
    missing.required = 1;
    refused({missing}, "required names a missing property");
    JsonSchemaNode items = kinds(JsonSchemaNode::kArray);
    items.items = 5;
    refused({items}, "items is out of range");
}

TEST(JsonTokens, WithASchemaEqualFeedingEveryTokenFromEveryPrefix)
{
    // Keys and literals are matched byte by byte, so a plain tail inside them is not free.
    std::vector<std::string> const alphabet = {"{", "}", "[", "]", "\"", ":", ",", " ", "a", "g", "e", "n", "m",
        "t", "r", "u", "l", "1", "0", ".", "-", "d", "o", "c", "s", "name", "age", "\"red\"", "tags", "x"};
    std::string const text = "{\"name\": \"a name\", \"tags\": [\"t\", \"u\"], \"color\": \"red\", \"age\": 10}";
    auto const schema = person();
    expectTokensOfEveryPrefix(JsonObjectPrefix(schema.get()), randomPieces(alphabet, 11, 4), text);
}

TEST(JsonSchemaPrefix, KeepsIntegersWithinTheirBounds)
{
    std::vector<JsonSchemaNode> nodes(2);
    nodes[0] = kinds(JsonSchemaNode::kArray);
    nodes[0].items = 1;
    nodes[1] = kinds(JsonSchemaNode::kInteger);
    nodes[1].minimum = -12;
    nodes[1].maximum = 305;
    JsonSchema const schema(std::move(nodes));
    auto const whole = [&](std::string const& text) { return readWith(schema, text) == std::make_pair(text.size(), true); };
    for (std::string const text : {"[0]", "[-0]", "[305]", "[-12]", "[-2]", "[31]", "[7, 30, 300, -1, -9, 99]"})
    {
        EXPECT_TRUE(whole(text)) << text;
    }
    struct Case
    {
        std::string text;
        std::size_t failsAt;
    };
    for (Case const& c : std::vector<Case>{
             {"[306]", 3},  // 30 may still become 30..305, 306 is out
             {"[310]", 3},
             {"[4000]", 3}, // 400 is out, and longer only grows
             {"[-13]", 3},
             {"[-120]", 4},
             {"[-00]", 3},  // no digit after a leading 0
         })
    {
        EXPECT_EQ(readWith(schema, c.text).first, c.failsAt) << c.text;
    }
    // Positive only: '-' cannot begin a value.
    std::vector<JsonSchemaNode> positive(2);
    positive[0] = kinds(JsonSchemaNode::kArray);
    positive[0].items = 1;
    positive[1] = kinds(JsonSchemaNode::kInteger);
    positive[1].minimum = 10;
    positive[1].maximum = 10;
    JsonSchema const ten(std::move(positive));
    EXPECT_EQ(readWith(ten, "[-").first, 1u);
    EXPECT_EQ(readWith(ten, "[9]").first, 1u); // 9 is below 10, and 9x is 90 or more
    EXPECT_EQ(readWith(ten, "[10]"), std::make_pair(std::size_t{4}, true));
    EXPECT_EQ(readWith(ten, "[1]").first, 2u); // 1 may become 10, but ']' ends it at 1
}
