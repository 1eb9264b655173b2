#include "runtime/json_object.h"

#include <algorithm>
#include <atomic>
#include <string>

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

JsonObjectPrefix::JsonObjectPrefix(JsonSchema const* schema)
{
    mSchema = schema;
    mNode = schema != nullptr ? 0 : JsonSchemaNode::kAny;
}

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

JsonSchemaNode const* JsonObjectPrefix::frameNode() const
{
    if (mSchema == nullptr || mDepth == 0 || mFrames[mDepth - 1].node == JsonSchemaNode::kAny)
    {
        return nullptr;
    }
    return &mSchema->nodes[static_cast<std::size_t>(mFrames[mDepth - 1].node)];
}

bool JsonObjectPrefix::mayAddProperty() const
{
    JsonSchemaNode const* n = frameNode();
    if (n == nullptr)
    {
        return true;
    }
    if (n->maxProperties >= 0 && static_cast<std::int32_t>(mFrames[mDepth - 1].count) >= n->maxProperties)
    {
        return false;
    }
    if (n->additional != JsonSchemaNode::kNone)
    {
        return true;
    }
    auto const all = n->names.size() == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n->names.size()) - 1;
    return (all & ~mFrames[mDepth - 1].seen) != 0;
}

bool JsonObjectPrefix::match(std::vector<std::string> const& texts, unsigned char c)
{
    // The texts in [mLo, mHi) share their first mPos bytes, so those whose next byte is c
    // follow each other (a text that ends there sorts first).
    auto const at = [&](std::size_t i) {
        return texts[i].size() > mPos ? static_cast<int>(static_cast<unsigned char>(texts[i][mPos])) : -1;
    };
    std::size_t lo = mLo;
    while (lo < mHi && at(lo) < c)
    {
        ++lo;
    }
    std::size_t hi = lo;
    while (hi < mHi && at(hi) == c)
    {
        ++hi;
    }
    if (lo == hi)
    {
        return false;
    }
    mLo = static_cast<std::uint16_t>(lo);
    mHi = static_cast<std::uint16_t>(hi);
    ++mPos;
    if (!mKey)
    {
        return true;
    }
    // A key: while only declared properties may follow, one not yet read must still begin so.
    JsonSchemaNode const* n = frameNode();
    if (n->additional != JsonSchemaNode::kNone)
    {
        return true;
    }
    for (std::size_t i = mLo; i < mHi; ++i)
    {
        if (((mFrames[mDepth - 1].seen >> i) & 1) == 0)
        {
            return true;
        }
    }
    return false;
}

JsonSchemaNode const* JsonObjectPrefix::valueNode() const
{
    return mSchema == nullptr || mNode < 0 ? nullptr : &mSchema->nodes[static_cast<std::size_t>(mNode)];
}

bool JsonObjectPrefix::capped() const
{
    JsonSchemaNode const* n = valueNode();
    return n != nullptr && n->maxLength >= 0;
}

bool JsonObjectPrefix::character()
{
    if (mKey)
    {
        return true;
    }
    JsonSchemaNode const* n = valueNode();
    if (n != nullptr && n->maxLength >= 0 && mChars >= static_cast<std::uint32_t>(n->maxLength))
    {
        return false;
    }
    ++mChars;
    return true;
}

bool JsonObjectPrefix::withinBounds(bool digits, bool whole) const
{
    JsonSchemaNode const* n = valueNode();
    if (n == nullptr || (n->minimum == -JsonSchemaNode::kMaxBound && n->maximum == JsonSchemaNode::kMaxBound))
    {
        return true;
    }
    // The magnitudes [lo, hi] the sign allows (-0 is 0).
    std::int64_t const lo = mNegative ? std::max<std::int64_t>(-n->maximum, 0) : std::max<std::int64_t>(n->minimum, 0);
    std::int64_t const hi = mNegative ? -n->minimum : n->maximum;
    if (lo > hi)
    {
        return false;
    }
    auto const m = static_cast<std::int64_t>(mMagnitude);
    if (!digits)
    {
        return true; // after '-': any magnitude may follow
    }
    if (m >= lo && m <= hi)
    {
        return true;
    }
    if (whole || m == 0 || m > hi)
    {
        return false; // no digit may follow (a leading 0), or more only grow it
    }
    // With k more digits: [m * 10^k, (m + 1) * 10^k - 1].
    for (std::int64_t scale = 10; m <= hi / scale; scale *= 10)
    {
        if (m * scale <= hi && (m + 1) * scale - 1 >= lo)
        {
            return true;
        }
        if (scale > JsonSchemaNode::kMaxBound / 10)
        {
            break;
        }
    }
    return false;
}

bool JsonObjectPrefix::digit(unsigned char c)
{
    if (!isDigit(c))
    {
        return false;
    }
    // Past every bound the magnitude stays one past the largest.
    auto const cap = static_cast<std::uint64_t>(JsonSchemaNode::kMaxBound) + 1;
    auto const d = static_cast<std::uint64_t>(c - '0');
    mMagnitude = mMagnitude > (cap - d) / 10 ? cap : mMagnitude * 10 + d;
    return withinBounds(true, false);
}

bool JsonObjectPrefix::keyStart()
{
    mKey = true;
    mMode = Mode::kString;
    mMatching = false;
    JsonSchemaNode const* n = frameNode();
    if (n == nullptr)
    {
        return true;
    }
    if (!n->names.empty())
    {
        mMatching = true;
        mLo = 0;
        mHi = static_cast<std::uint16_t>(n->names.size());
        mPos = 0;
    }
    return mayAddProperty();
}

bool JsonObjectPrefix::keyEnd()
{
    mKey = false;
    mMode = Mode::kColon;
    JsonSchemaNode const* n = frameNode();
    if (n == nullptr)
    {
        mNode = JsonSchemaNode::kAny;
        return true;
    }
    bool const declared = mMatching && mLo < mHi && n->names[mLo].size() == mPos;
    mMatching = false;
    Frame& frame = mFrames[mDepth - 1];
    ++frame.count; // properties read
    if (declared)
    {
        if ((frame.seen >> mLo) & 1)
        {
            return false; // a property twice
        }
        frame.seen |= std::uint64_t{1} << mLo;
        mNode = n->properties[mLo];
        return true;
    }
    mNode = n->additional;
    return n->additional != JsonSchemaNode::kNone;
}

bool JsonObjectPrefix::feed(unsigned char c)
{
    if (!isSpace(c))
    {
        mSpaces = 0;
    }
    if (mMatching && !(mMode == Mode::kString && c == '"') && !match(frameNode()->names, c))
    {
        // No declared name begins so: the key is another property's, where the object takes
        // them (match fails otherwise).
        if (frameNode()->additional == JsonSchemaNode::kNone)
        {
            return false;
        }
        mMatching = false;
    }
    switch (mMode)
    {
    case Mode::kStart:
        if (mSchema != nullptr)
        {
            return space(c) || (!isSpace(c) && value(c));
        }
        return c == '{' ? open('{', JsonSchemaNode::kAny) : space(c);
    case Mode::kValue: return space(c) || (!isSpace(c) && value(c));
    case Mode::kArrayFirst: return c == ']' ? close(']') : space(c) || (!isSpace(c) && value(c));
    case Mode::kObjectFirst:
        if (c == '}')
        {
            return close('}');
        }
        [[fallthrough]];
    case Mode::kKey: return c == '"' ? keyStart() : space(c);
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
            if (mKey)
            {
                return keyEnd();
            }
            JsonSchemaNode const* n = valueNode();
            mMode = Mode::kAfterValue;
            return n == nullptr || mChars >= static_cast<std::uint32_t>(n->minLength);
        }
        if (c == '\\')
        {
            mMode = Mode::kEscape;
            return character(); // (a low surrogate's escape is taken back when it is whole)
        }
        if (c < 0x20)
        {
            return false; // a raw control character: JSON wants it escaped
        }
        mHighSurrogate = false;
        if (c < 0x80)
        {
            return character();
        }
        if (!character())
        {
            return false;
        }
        // The lead byte of a UTF-8 character of 2, 3 or 4 bytes (RFC 3629: no overlong form, no
        // UTF-16 surrogate, nothing past U+10FFFF), which narrows the next byte's range.
        mPending = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : 0;
        mUtf8Lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        mUtf8Hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        mMode = Mode::kUtf8;
        return mPending > 0;
    case Mode::kUtf8:
        if (c < mUtf8Lo || c > mUtf8Hi)
        {
            return false;
        }
        mUtf8Lo = 0x80;
        mUtf8Hi = 0xBF;
        if (--mPending == 0)
        {
            mMode = Mode::kString;
        }
        return true;
    case Mode::kEscape:
        if (c == 'u')
        {
            mPending = 4;
            mHex = 0;
            mMode = Mode::kUnicode;
            return true;
        }
        mHighSurrogate = false;
        mMode = Mode::kString;
        return std::string_view("\"\\/bfnrt").find(static_cast<char>(c)) != std::string_view::npos;
    case Mode::kUnicode:
        if (!isHex(c))
        {
            return false;
        }
        mHex = static_cast<std::uint16_t>(mHex * 16 + (isDigit(c) ? c - '0' : (c | 0x20) - 'a' + 10));
        if (--mPending == 0)
        {
            mMode = Mode::kString;
            // A low surrogate after a high one ends one character, counted at the first.
            bool const low = mHex >= 0xDC00 && mHex <= 0xDFFF;
            if (low && mHighSurrogate && !mKey)
            {
                --mChars;
            }
            mHighSurrogate = mHex >= 0xD800 && mHex <= 0xDBFF;
        }
        return true;
    case Mode::kMinus:
        mMode = c == '0' ? Mode::kZero : Mode::kInteger;
        return digit(c); // ("-0" as "0": no digit may follow, and 0 is within bounds or not)
    case Mode::kZero:
    case Mode::kInteger:
    case Mode::kFraction:
        if (isDigit(c) && mMode != Mode::kZero)
        {
            return mMode == Mode::kFraction || digit(c);
        }
        if (c == '.' && mMode != Mode::kFraction && !mInteger)
        {
            mMode = Mode::kFractionDot;
            return true;
        }
        if ((c == 'e' || c == 'E') && !mInteger)
        {
            mMode = Mode::kExponentE;
            return true;
        }
        // The number ended before c: an integer's value within its bounds?
        return (mMode == Mode::kFraction || withinBounds(true, true)) && afterValue(c);
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
    case Mode::kChoice:
    {
        auto const& literals = mSchema->nodes[static_cast<std::size_t>(mNode)].literals;
        bool const ended = literals[mLo].size() == mPos; // one literal is whole
        return match(literals, c) || (ended && afterValue(c));
    }
    case Mode::kDone: return false;
    }
    return false;
}

bool JsonObjectPrefix::open(char bracket, std::int32_t node)
{
    if (mDepth == kMaxJsonDepth)
    {
        return false;
    }
    mFrames[mDepth++] = Frame{node, 0, 0, bracket};
    mMode = bracket == '{' ? Mode::kObjectFirst : Mode::kArrayFirst;
    if (bracket == '[')
    {
        JsonSchemaNode const* n = frameNode();
        mNode = n != nullptr ? n->items : JsonSchemaNode::kAny;
    }
    return true;
}

bool JsonObjectPrefix::close(char bracket)
{
    if (mDepth == 0 || mFrames[mDepth - 1].bracket != (bracket == '}' ? '{' : '['))
    {
        return false;
    }
    if (JsonSchemaNode const* n = frameNode())
    {
        Frame const& frame = mFrames[mDepth - 1];
        auto const count = static_cast<std::int32_t>(frame.count);
        if (bracket == '}' ? (n->required & ~frame.seen) != 0 || count < n->minProperties : count < n->minItems)
        {
            return false; // a required property, or properties or items, still due
        }
    }
    --mDepth;
    mMode = mDepth == 0 ? Mode::kDone : Mode::kAfterValue;
    return true;
}

bool JsonObjectPrefix::value(unsigned char c)
{
    if (mDepth > 0 && mFrames[mDepth - 1].bracket == '[')
    {
        JsonSchemaNode const* n = frameNode();
        if (n != nullptr && n->maxItems >= 0 && static_cast<std::int32_t>(mFrames[mDepth - 1].count) >= n->maxItems)
        {
            return false;
        }
        ++mFrames[mDepth - 1].count;
    }
    std::int32_t node = mNode;
    mInteger = false;
    if (mSchema != nullptr && node != JsonSchemaNode::kAny)
    {
        node = mSchema->dispatch(node, c);
        if (node == JsonSchema::kNoValue)
        {
            return false;
        }
        mNode = node;
        JsonSchemaNode const& n = mSchema->nodes[static_cast<std::size_t>(node)];
        if (!n.literals.empty())
        {
            mMode = Mode::kChoice;
            mLo = 0;
            mHi = static_cast<std::uint16_t>(n.literals.size());
            mPos = 0;
            return match(n.literals, c);
        }
        mInteger = (n.kinds & JsonSchemaNode::kNumber) == 0;
    }
    switch (c)
    {
    case '{':
    case '[': return open(static_cast<char>(c), node);
    case '"':
        mKey = false;
        mMode = Mode::kString;
        mChars = 0;
        mHighSurrogate = false;
        return true;
    case '-':
        mMode = Mode::kMinus;
        mNegative = true;
        mMagnitude = 0;
        return withinBounds(false, false);
    case '0':
        mMode = Mode::kZero;
        mNegative = false;
        mMagnitude = 0;
        return withinBounds(true, true);
    case 't': mLiteral = "rue"; break;
    case 'f': mLiteral = "alse"; break;
    case 'n': mLiteral = "ull"; break;
    default:
        mMode = Mode::kInteger;
        mNegative = false;
        mMagnitude = 0;
        return c >= '1' && c <= '9' && digit(c);
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
        if (mFrames[mDepth - 1].bracket == '{')
        {
            mMode = Mode::kKey;
            return mayAddProperty();
        }
        JsonSchemaNode const* n = frameNode();
        mMode = Mode::kValue;
        mNode = n != nullptr ? n->items : JsonSchemaNode::kAny;
        return n == nullptr || n->maxItems < 0 || static_cast<std::int32_t>(mFrames[mDepth - 1].count) < n->maxItems;
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

std::vector<TokenIdType> bytewise(std::vector<std::string> const& bytes)
{
    std::vector<TokenIdType> ids;
    for (std::size_t t = 0; t < bytes.size(); ++t)
    {
        if (!bytes[t].empty())
        {
            ids.push_back(static_cast<TokenIdType>(t));
        }
    }
    std::sort(ids.begin(), ids.end(), [&bytes](TokenIdType x, TokenIdType y) {
        return bytes[static_cast<std::size_t>(x)] < bytes[static_cast<std::size_t>(y)];
    });
    return ids;
}

} // namespace

TokenTable::TokenTable(std::vector<std::string> bytes)
    : bytes(std::move(bytes))
    , byFirstByte(firstBytes(this->bytes))
    , byBytes(bytewise(this->bytes))
    , serial(nextSerial())
{
}

std::uint64_t TokenTable::nextSerial()
{
    static std::atomic<std::uint64_t> next{0};
    return next++;
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
