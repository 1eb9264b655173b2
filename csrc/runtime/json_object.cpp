#include "runtime/json_object.h"

#include <algorithm>

namespace kiln
{
namespace
{

bool isSpace(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

bool isDigit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

bool isHex(unsigned char c)
{
    return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

} // namespace

bool JsonObjectPrefix::feed(std::string_view bytes)
{
    return std::all_of(bytes.begin(), bytes.end(), [this](char c) { return feed(static_cast<unsigned char>(c)); });
}

bool JsonObjectPrefix::space(unsigned char c)
{
    if (!isSpace(c) || mSpaces == kMaxJsonWhitespace)
    {
        return false;
    }
    ++mSpaces;
    return true;
}

bool JsonObjectPrefix::feed(unsigned char c)
{
    if (!isSpace(c))
    {
        mSpaces = 0;
    }
    switch (mMode)
    {
    case Mode::kStart: return c == '{' ? open('{') : space(c);
    case Mode::kValue: return space(c) || (!isSpace(c) && value(c));
    case Mode::kArrayFirst: return c == ']' ? close(']') : space(c) || (!isSpace(c) && value(c));
    case Mode::kObjectFirst:
        if (c == '}')
        {
            return close('}');
        }
        [[fallthrough]];
    case Mode::kKey:
        if (c == '"')
        {
            mKey = true;
            mMode = Mode::kString;
            return true;
        }
        return space(c);
    case Mode::kColon:
        if (c == ':')
        {
            mMode = Mode::kValue;
            return true;
        }
        return space(c);
    case Mode::kAfterValue: return afterValue(c);
    case Mode::kString:
        if (c == '"')
        {
            mMode = mKey ? Mode::kColon : Mode::kAfterValue;
            mKey = false;
            return true;
        }
        if (c == '\\')
        {
            mMode = Mode::kEscape;
            return true;
        }
        if (c < 0x20)
        {
            return false; // a raw control character: JSON wants it escaped
        }
        if (c < 0x80)
        {
            return true;
        }
        // The lead byte of a UTF-8 character of 2, 3 or 4 bytes (no overlong 2-byte forms).
        mPending = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : 0;
        mMode = Mode::kUtf8;
        return mPending > 0;
    case Mode::kUtf8:
        if ((c & 0xC0) != 0x80)
        {
            return false;
        }
        if (--mPending == 0)
        {
            mMode = Mode::kString;
        }
        return true;
    case Mode::kEscape:
        if (c == 'u')
        {
            mPending = 4;
            mMode = Mode::kUnicode;
            return true;
        }
        mMode = Mode::kString;
        return std::string_view("\"\\/bfnrt").find(static_cast<char>(c)) != std::string_view::npos;
    case Mode::kUnicode:
        if (!isHex(c))
        {
            return false;
        }
        if (--mPending == 0)
        {
            mMode = Mode::kString;
        }
        return true;
    case Mode::kMinus:
        mMode = c == '0' ? Mode::kZero : Mode::kInteger;
        return isDigit(c);
    case Mode::kZero:
    case Mode::kInteger:
    case Mode::kFraction:
        if (isDigit(c) && mMode != Mode::kZero)
        {
            return true;
        }
        if (c == '.' && mMode != Mode::kFraction)
        {
            mMode = Mode::kFractionDot;
            return true;
        }
        if (c == 'e' || c == 'E')
        {
            mMode = Mode::kExponentE;
            return true;
        }
        return afterValue(c); // the number ended before c
    case Mode::kFractionDot:
        mMode = Mode::kFraction;
        return isDigit(c);
    case Mode::kExponentE:
        if (c == '+' || c == '-')
        {
            mMode = Mode::kExponentSign;
            return true;
        }
        [[fallthrough]];
    case Mode::kExponentSign:
        mMode = Mode::kExponent;
        return isDigit(c);
    case Mode::kExponent: return isDigit(c) || afterValue(c);
    case Mode::kLiteral:
        if (static_cast<char>(c) != *mLiteral)
        {
            return false;
        }
        if (*++mLiteral == '\0')
        {
            mMode = Mode::kAfterValue;
        }
        return true;
    case Mode::kDone: return false;
    }
    return false;
}

bool JsonObjectPrefix::open(char bracket)
{
    if (mDepth == kMaxJsonDepth)
    {
        return false;
    }
    mStack[mDepth++] = bracket;
    mMode = bracket == '{' ? Mode::kObjectFirst : Mode::kArrayFirst;
    return true;
}

bool JsonObjectPrefix::close(char bracket)
{
    if (mDepth == 0 || mStack[mDepth - 1] != (bracket == '}' ? '{' : '['))
    {
        return false;
    }
    --mDepth;
    mMode = mDepth == 0 ? Mode::kDone : Mode::kAfterValue;
    return true;
}

bool JsonObjectPrefix::value(unsigned char c)
{
    switch (c)
    {
    case '{':
    case '[': return open(static_cast<char>(c));
    case '"':
        mKey = false;
        mMode = Mode::kString;
        return true;
    case '-': mMode = Mode::kMinus; return true;
    case '0': mMode = Mode::kZero; return true;
    case 't': mLiteral = "rue"; break;
    case 'f': mLiteral = "alse"; break;
    case 'n': mLiteral = "ull"; break;
    default:
        mMode = Mode::kInteger;
        return c >= '1' && c <= '9';
    }
    mMode = Mode::kLiteral;
    return true;
}

bool JsonObjectPrefix::afterValue(unsigned char c)
{
    mMode = Mode::kAfterValue;
    if (isSpace(c))
    {
        return space(c);
    }
    if (c == ',')
    {
        mMode = mStack[mDepth - 1] == '{' ? Mode::kKey : Mode::kValue;
        return true;
    }
    return (c == '}' || c == ']') && close(static_cast<char>(c));
}

namespace
{

std::array<std::vector<TokenTable::Entry>, 256> firstBytes(std::vector<std::string> const& bytes)
{
    std::array<std::vector<TokenTable::Entry>, 256> buckets;
    for (std::size_t t = 0; t < bytes.size(); ++t)
    {
        std::string const& b = bytes[t];
        if (b.empty())
        {
            continue;
        }
        bool const plain = std::all_of(b.begin() + 1, b.end(), [](char ch) {
            auto const c = static_cast<unsigned char>(ch);
            return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
        });
        auto const second = static_cast<std::int16_t>(b.size() > 1 ? static_cast<unsigned char>(b[1]) : -1);
        buckets[static_cast<unsigned char>(b[0])].push_back({static_cast<TokenIdType>(t), second, plain});
    }
    for (auto& bucket : buckets)
    {
        std::stable_sort(bucket.begin(), bucket.end(),
            [](TokenTable::Entry const& x, TokenTable::Entry const& y) { return x.second < y.second; });
    }
    return buckets;
}

} // namespace

TokenTable::TokenTable(std::vector<std::string> bytes)
    : bytes(std::move(bytes))
    , byFirstByte(firstBytes(this->bytes))
{
}

std::vector<TokenIdType> jsonTokens(JsonObjectPrefix const& state, TokenTable const& table, SizeType vocabSize)
{
    auto const n = std::min(table.bytes.size(), static_cast<std::size_t>(std::max<SizeType>(vocabSize, 0)));
    std::vector<char> allowed(n, 0);
    for (std::size_t b = 0; b < 256; ++b)
    {
        JsonObjectPrefix afterFirst = state;
        if (table.byFirstByte[b].empty() || !afterFirst.feed(static_cast<unsigned char>(b)))
        {
            continue;
        }
        bool const inString = afterFirst.inString();
        int group = -2; // the second byte of the tokens being read (they come grouped by it)
        bool groupFeeds = false;
        JsonObjectPrefix afterSecond;
        for (TokenTable::Entry const& e : table.byFirstByte[b])
        {
            auto const i = static_cast<std::size_t>(e.id);
            if (i >= n)
            {
                continue;
            }
            if (e.second < 0 || (inString && e.plainTail))
            {
                allowed[i] = 1;
                continue;
            }
            if (e.second != group)
            {
                group = e.second;
                afterSecond = afterFirst;
                groupFeeds = afterSecond.feed(static_cast<unsigned char>(e.second));
            }
            if (groupFeeds)
            {
                JsonObjectPrefix next = afterSecond;
                allowed[i] = next.feed(std::string_view(table.bytes[i]).substr(2)) ? 1 : 0;
            }
        }
    }
    std::vector<TokenIdType> tokens;
    for (std::size_t i = 0; i < n; ++i)
    {
        if (allowed[i] != 0)
        {
            tokens.push_back(static_cast<TokenIdType>(i));
        }
    }
    return tokens;
}

} // namespace kiln
