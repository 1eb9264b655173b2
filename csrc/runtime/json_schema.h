#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln
{

/// @brief One node of a compiled JSON schema (kiln.runtime.json_schema compiles them): what a
/// value may be. A node index kAny stands for any JSON value.
struct JsonSchemaNode
{
    static constexpr std::int32_t kAny = -1;  ///< as a node index: any JSON value
    static constexpr std::int32_t kNone = -2; ///< as `additional`: no property but `names`
    static constexpr std::size_t kMaxProperties = 64;

    enum Kind : std::uint8_t
    {
        kObject = 1,
        kArray = 2,
        kString = 4,
        kNumber = 8,
        kInteger = 16, ///< a number without fraction or exponent
        kBoolean = 32,
        kNull = 64,
        kAnyKind = 127,
    };

    std::uint8_t kinds = kAnyKind;
    /// An object's declared properties, as JSON writes each name between its quotes, sorted
    /// bytewise, at most kMaxProperties
    std::vector<std::string> names;
    std::vector<std::int32_t> properties; ///< the node of each name's value
    std::uint64_t required = 0;           ///< bit i: names[i] must appear
    std::int32_t additional = kNone;      ///< the node of any other property's value, or kNone
    std::int32_t minProperties = 0;       ///< an object's properties, declared or not
    std::int32_t maxProperties = -1;      ///< -1: no limit
    std::int32_t items = kAny;            ///< the node of an array's items
    std::int32_t minItems = 0;
    std::int32_t maxItems = -1; ///< -1: no limit
    /// A string's characters (code points: an escape is one, a surrogate pair of escapes one)
    std::int32_t minLength = 0;
    std::int32_t maxLength = -1; ///< -1: no limit
    /// An integer's bounds (a node whose numbers are integers only), within +-kMaxBound
    std::int64_t minimum = -kMaxBound;
    std::int64_t maximum = kMaxBound;
    static constexpr std::int64_t kMaxBound = std::int64_t{1} << 62;
    /// Not empty: the value is one of these texts, exactly (enum, const), sorted bytewise
    std::vector<std::string> literals;
    /// Not empty: the value is one of these nodes (none a union), told apart by its first byte
    std::vector<std::int32_t> anyOf;
};

/// @brief A compiled JSON schema, read only and shared by the requests that use it: node 0 is
/// the top-level value's, an object or an array.
class JsonSchema
{
public:
    /// @brief Checks the nodes (std::invalid_argument saying what is wrong).
    explicit JsonSchema(std::vector<JsonSchemaNode> nodes);

    /// @brief The node a value of `node` that begins with `c` is read against (a union's
    /// alternative, or `node`), or kNoValue when none begins so.
    [[nodiscard]] std::int32_t dispatch(std::int32_t node, unsigned char c) const;

    static constexpr std::int32_t kNoValue = -3;

    std::vector<JsonSchemaNode> const nodes;

private:
    std::vector<std::array<std::uint64_t, 4>> mFirstBytes; ///< per node, the bytes a value may begin with
};

} // namespace kiln
