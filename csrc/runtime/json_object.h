#pragma once

#include "runtime/json_schema.h"
#include "runtime/types.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln
{

/// @brief The bytes of each token id of a vocabulary (an empty entry: a token never picked
/// where only JSON may follow, such as a special token), indexed for jsonTokens. Shared, read
/// only, by the requests that use it.
class TokenTable
{
public:
    explicit TokenTable(std::vector<std::string> bytes);

    /// What jsonTokens reads of a token before its bytes.
    struct Entry
    {
        TokenIdType id;
        std::int16_t second; ///< its second byte, -1 for a one-byte token
        /// its bytes after the first are printable ASCII other than '"' and '\' (inside a string
        /// they change nothing)
        bool plainTail;
    };

    std::vector<std::string> const bytes;
    /// The non-empty tokens by first byte, grouped by their second byte (one-byte tokens first).
    std::array<std::vector<Entry>, 256> const byFirstByte;
    /// The non-empty tokens in bytewise order of their bytes (a walk over them in this order
    /// meets each shared prefix once in a row, as a trie would).
    std::vector<TokenIdType> const byBytes;
    /// Tells this table from every other the process made (what is kept per table keys on it).
    std::uint64_t const serial;

private:
    static std::uint64_t nextSerial();
};

/// @brief The deepest nesting of objects and arrays JsonObjectPrefix takes.
inline constexpr std::size_t kMaxJsonDepth = 64;

/// @brief The most whitespace bytes JsonObjectPrefix takes in a row between tokens (enough to
/// indent a pretty-printed object; a model that would only write whitespace is moved on).
inline constexpr std::uint8_t kMaxJsonWhitespace = 32;

namespace detail
{

/// @brief JsonObjectPrefix's state but its open containers: copied whole, as bytes.
struct JsonPrefixHead
{
    enum class Mode : std::uint8_t
    {
        kStart,       ///< before the top-level object
        kValue,       ///< a value is due
        kArrayFirst,  ///< after '[': a value or ']'
        kObjectFirst, ///< after '{': a key or '}'
        kKey,         ///< after ',' in an object: a key
        kColon,       ///< after a key
        kAfterValue,  ///< ',' or the container's closing bracket
        kString,
        kEscape,     ///< after '\' in a string
        kUnicode,    ///< in \uXXXX
        kUtf8,       ///< continuation bytes of a character
        kMinus,      ///< after a number's '-'
        kZero,       ///< a number's leading 0
        kInteger,    ///< a number's integer digits
        kFractionDot,
        kFraction,
        kExponentE,
        kExponentSign,
        kExponent,
        kLiteral, ///< in true, false or null
        kChoice,  ///< in one of a schema node's literals
        kDone,
    };

    JsonSchema const* mSchema = nullptr;
    Mode mMode = Mode::kStart;
    bool mKey = false;            ///< the string being read is an object key
    bool mMatching = false;       ///< the key is matched against its object's declared names
    bool mInteger = false;        ///< the number being read may have no fraction or exponent
    std::uint8_t mPending = 0;    ///< hex digits or UTF-8 continuation bytes still due
    std::uint8_t mUtf8Lo = 0x80;  ///< the range of the next UTF-8 continuation byte
    std::uint8_t mUtf8Hi = 0xBF;
    bool mHighSurrogate = false;  ///< the last character was a \uD800-\uDBFF escape
    std::uint8_t mDepth = 0;
    std::uint8_t mSpaces = 0; ///< whitespace bytes in a row just read between tokens
    bool mNegative = false;       ///< the number being read began with '-'
    std::uint16_t mHex = 0;       ///< the \u escape's value so far
    std::uint64_t mMagnitude = 0; ///< an integer's digits read so far, as a number (capped)
    std::uint32_t mChars = 0;     ///< characters of the string value read
    char const* mLiteral = nullptr; ///< the rest of true, false or null
    std::int32_t mNode = JsonSchemaNode::kAny; ///< the schema node of the value due or being read
    /// Matching a key against names, or a value against literals: the texts [mLo, mHi) of the
    /// list begin with the mPos bytes read
    std::uint16_t mLo = 0;
    std::uint16_t mHi = 0;
    std::uint32_t mPos = 0;
};

} // namespace detail

/// @brief Reads a text byte by byte and says whether it can still grow into one JSON object
/// (RFC 8259: the top-level value an object; whitespace between tokens, at most
/// kMaxJsonWhitespace bytes in a row; strings valid UTF-8 with no raw control characters) and
/// whether that object is complete; with a schema, one JSON value valid against it (its
/// top-level value an object or an array). A plain value: copy it to try bytes ahead (a copy
/// takes only the containers open).
class JsonObjectPrefix : private detail::JsonPrefixHead
{
public:
    /// @brief `schema` (not owned; it must outlive the state and its copies): nullptr for any
    /// JSON object.
    explicit JsonObjectPrefix(JsonSchema const* schema = nullptr);
    JsonObjectPrefix(JsonObjectPrefix const& other)
        : detail::JsonPrefixHead(other)
    {
        copyFrames(other);
    }

    /// @brief Copies the state and only the containers open (a copy is made for each token tried).
    JsonObjectPrefix& operator=(JsonObjectPrefix const& other)
    {
        detail::JsonPrefixHead::operator=(other);
        copyFrames(other);
        return *this;
    }

    /// @brief Reads `c`; false when the text read so far can no longer begin a JSON object (the
    /// state is then unspecified).
    bool feed(unsigned char c);

    /// @brief Reads every byte of `bytes`; false as soon as one of them fails.
    bool feed(std::string_view bytes);

    /// @brief Whether the top-level object has been closed (nothing may follow it).
    [[nodiscard]] bool complete() const
    {
        return mMode == Mode::kDone;
    }

    /// @brief Whether the text is inside a string any text may continue (not a key the schema
    /// names, nor one of its literals, nor a string with a maxLength), past any escape or UTF-8
    /// character begun.
    [[nodiscard]] bool inString() const
    {
        return mMode == Mode::kString && !mMatching && (mKey || !capped());
    }

private:

    /// An open object or array.
    struct Frame
    {
        std::int32_t node;  ///< its schema node, or kAny
        std::uint32_t count; ///< an array's items begun, an object's properties read
        std::uint64_t seen;  ///< an object's declared properties read (bit i: names[i])
        char bracket;
    };

    /// The open containers of `other`: a few as a block of fixed size (moves the compiler
    /// inlines), more one by one.
    void copyFrames(JsonObjectPrefix const& other)
    {
        constexpr std::size_t kBlock = 4;
        if (other.mDepth <= kBlock)
        {
            std::memcpy(mFrames.data(), other.mFrames.data(), kBlock * sizeof(Frame));
        }
        else
        {
            std::copy_n(other.mFrames.begin(), other.mDepth, mFrames.begin());
        }
    }

    bool space(unsigned char c); ///< whitespace between tokens, within the run's limit
    bool open(char bracket, std::int32_t node);
    bool close(char bracket);
    bool value(unsigned char c);
    bool afterValue(unsigned char c);
    bool keyStart();
    bool keyEnd();
    bool character(); ///< a string value's character begins: within its maxLength?
    /// With the digits read so far (none after '-'; `whole`: no more may follow), whether some
    /// integer they begin lies within the value's node's bounds.
    [[nodiscard]] bool withinBounds(bool digits, bool whole) const;
    bool digit(unsigned char c); ///< an integer's next digit, if it keeps the bounds reachable
    [[nodiscard]] JsonSchemaNode const* valueNode() const; ///< the value's node, nullptr for any
    [[nodiscard]] bool capped() const; ///< the value's node has a maxLength
    bool match(std::vector<std::string> const& texts, unsigned char c);
    [[nodiscard]] JsonSchemaNode const* frameNode() const;
    [[nodiscard]] bool mayAddProperty() const;

    std::array<Frame, kMaxJsonDepth> mFrames;
};

/// @brief The tokens (ascending) that keep `state` a prefix of a JSON object: those whose bytes
/// in `table` all feed; ids past `vocabSize` or the table, and empty entries, are left out. Each
/// first byte is tried once, and each second byte once after it; a token whose tail is plain
/// text needs no more where its first byte leaves the text inside a string.
[[nodiscard]] std::vector<TokenIdType> jsonTokens(JsonObjectPrefix const& state, TokenTable const& table, SizeType vocabSize);

} // namespace kiln
