#pragma once

#include "runtime/types.h"

#include <array>
#include <cstdint>
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
};

/// @brief The deepest nesting of objects and arrays JsonObjectPrefix takes.
inline constexpr std::size_t kMaxJsonDepth = 64;

/// @brief The most whitespace bytes JsonObjectPrefix takes in a row between tokens (enough to
/// indent a pretty-printed object; a model that would only write whitespace is moved on).
inline constexpr std::uint8_t kMaxJsonWhitespace = 32;

/// @brief Reads a text byte by byte and says whether it can still grow into one JSON object
/// (RFC 8259: the top-level value an object; whitespace between tokens, at most
/// kMaxJsonWhitespace bytes in a row; strings valid UTF-8 with no raw control characters) and
/// whether that object is complete. A plain value: copy it to try bytes ahead.
class JsonObjectPrefix
{
public:
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

    /// @brief Whether the text is inside a string, past any escape or UTF-8 character begun.
    [[nodiscard]] bool inString() const
    {
        return mMode == Mode::kString;
    }

private:
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
        kDone,
    };

    bool space(unsigned char c); ///< whitespace between tokens, within the run's limit
    bool open(char bracket);
    bool close(char bracket);
    bool value(unsigned char c);
    bool afterValue(unsigned char c);

    Mode mMode = Mode::kStart;
    bool mKey = false;            ///< the string being read is an object key
    std::uint8_t mPending = 0;    ///< hex digits or UTF-8 continuation bytes still due
    std::uint8_t mDepth = 0;
    std::uint8_t mSpaces = 0; ///< whitespace bytes in a row just read between tokens
    char const* mLiteral = nullptr; ///< the rest of true, false or null
    std::array<char, kMaxJsonDepth> mStack{};
};

/// @brief The tokens (ascending) that keep `state` a prefix of a JSON object: those whose bytes
/// in `table` all feed; ids past `vocabSize` or the table, and empty entries, are left out. Each
/// first byte is tried once, and each second byte once after it; a token whose tail is plain
/// text needs no more where its first byte leaves the text inside a string.
[[nodiscard]] std::vector<TokenIdType> jsonTokens(JsonObjectPrefix const& state, TokenTable const& table, SizeType vocabSize);

} // namespace kiln
