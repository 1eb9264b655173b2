#include "runtime/json_schema.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kiln
{
namespace
{

bool has(std::array<std::uint64_t, 4> const& set, unsigned char c)
{
    return ((set[c >> 6] >> (c & 63)) & 1) != 0;
}

void add(std::array<std::uint64_t, 4>& set, unsigned char c)
{
    set[c >> 6] |= std::uint64_t{1} << (c & 63);
}

/// The bytes a value of these kinds may begin with.
std::array<std::uint64_t, 4> kindBytes(std::uint8_t kinds)
{
    std::array<std::uint64_t, 4> set{};
    auto const addAll = [&set](std::string_view bytes) {
        for (char c : bytes)
        {
            add(set, static_cast<unsigned char>(c));
        }
    };
    if (kinds & JsonSchemaNode::kObject)
    {
        addAll("{");
    }
    if (kinds & JsonSchemaNode::kArray)
    {
        addAll("[");
    }
    if (kinds & JsonSchemaNode::kString)
    {
        addAll("\"");
    }
    if (kinds & (JsonSchemaNode::kNumber | JsonSchemaNode::kInteger))
    {
        addAll("-0123456789");
    }
    if (kinds & JsonSchemaNode::kBoolean)
    {
        addAll("tf");
    }
    if (kinds & JsonSchemaNode::kNull)
    {
        addAll("n");
    }
    return set;
}

void check(bool ok, std::size_t node, std::string const& what)
{
    if (!ok)
    {
        throw std::invalid_argument("JSON schema node " + std::to_string(node) + ": " + what);
    }
}

bool sortedUnique(std::vector<std::string> const& texts)
{
    return std::adjacent_find(texts.begin(), texts.end(), std::greater_equal<>()) == texts.end();
}

} // namespace

JsonSchema::JsonSchema(std::vector<JsonSchemaNode> nodes)
    : nodes(std::move(nodes))
{
    if (this->nodes.empty())
    {
        throw std::invalid_argument("a JSON schema needs at least its top-level node");
    }
    auto const count = static_cast<std::int32_t>(this->nodes.size());
    auto const isNode = [count](std::int32_t i) { return i >= 0 && i < count; };
    mFirstBytes.resize(this->nodes.size());
    for (std::size_t i = 0; i < this->nodes.size(); ++i)
    {
        JsonSchemaNode const& n = this->nodes[i];
        check(n.kinds != 0 && n.kinds <= JsonSchemaNode::kAnyKind, i, "kinds must be a non-empty set of the 7 kinds");
        check(n.names.size() <= JsonSchemaNode::kMaxProperties, i,
            "at most " + std::to_string(JsonSchemaNode::kMaxProperties) + " properties");
        check(n.properties.size() == n.names.size(), i, "one property node per name");
        check(sortedUnique(n.names), i, "names must be sorted and unique");
        check(n.names.size() == 64 || (n.required >> n.names.size()) == 0, i, "required names a missing property");
        check(std::all_of(n.properties.begin(), n.properties.end(),
                  [&](std::int32_t p) { return p == JsonSchemaNode::kAny || isNode(p); }),
            i, "a property's node is out of range");
        check(n.additional == JsonSchemaNode::kNone || n.additional == JsonSchemaNode::kAny || isNode(n.additional),
            i, "additional is out of range");
        check(n.items == JsonSchemaNode::kAny || isNode(n.items), i, "items is out of range");
        check(n.minProperties >= 0 && (n.maxProperties == -1 || n.maxProperties >= n.minProperties), i,
            "min_properties must be >= 0 and max_properties -1 or >= min_properties");
        check(n.minItems >= 0 && (n.maxItems == -1 || n.maxItems >= n.minItems), i,
            "min_items must be >= 0 and max_items -1 or >= min_items");
        check(n.minLength >= 0 && (n.maxLength == -1 || n.maxLength >= n.minLength), i,
            "min_length must be >= 0 and max_length -1 or >= min_length");
        check(-JsonSchemaNode::kMaxBound <= n.minimum && n.minimum <= n.maximum
                && n.maximum <= JsonSchemaNode::kMaxBound,
            i, "minimum must be <= maximum, both within +-2^62");
        check((n.minimum == -JsonSchemaNode::kMaxBound && n.maximum == JsonSchemaNode::kMaxBound)
                || (n.kinds & JsonSchemaNode::kNumber) == 0,
            i, "bounds apply to integers only");
        check(sortedUnique(n.literals), i, "literals must be sorted and unique");
        check(std::none_of(n.literals.begin(), n.literals.end(), [](std::string const& t) { return t.empty(); }), i,
            "a literal is empty");
        check(n.literals.size() <= std::numeric_limits<std::uint16_t>::max(), i, "too many literals");
        for (std::string const& t : n.literals)
        {
            add(mFirstBytes[i], static_cast<unsigned char>(t[0]));
        }
        if (n.literals.empty())
        {
            mFirstBytes[i] = kindBytes(n.kinds);
        }
    }
    for (std::size_t i = 0; i < this->nodes.size(); ++i)
    {
        JsonSchemaNode const& n = this->nodes[i];
        if (n.anyOf.empty())
        {
            continue;
        }
        std::array<std::uint64_t, 4> seen{};
        for (std::int32_t alt : n.anyOf)
        {
            check(isNode(alt) && this->nodes[static_cast<std::size_t>(alt)].anyOf.empty(), i,
                "an alternative must be a node that is not itself a union");
            auto const& bytes = mFirstBytes[static_cast<std::size_t>(alt)];
            for (std::size_t w = 0; w < 4; ++w)
            {
                check((seen[w] & bytes[w]) == 0, i, "two alternatives may begin with the same byte");
                seen[w] |= bytes[w];
            }
        }
        mFirstBytes[i] = seen;
    }
    auto const containers = kindBytes(JsonSchemaNode::kObject | JsonSchemaNode::kArray);
    for (std::size_t w = 0; w < 4; ++w)
    {
        check((mFirstBytes[0][w] & ~containers[w]) == 0, 0, "the top-level value must be an object or an array");
    }
    check(this->nodes[0].literals.empty(), 0, "the top-level value must be an object or an array, not a literal");
}

std::int32_t JsonSchema::dispatch(std::int32_t node, unsigned char c) const
{
    JsonSchemaNode const& n = nodes[static_cast<std::size_t>(node)];
    for (std::int32_t alt : n.anyOf)
    {
        if (has(mFirstBytes[static_cast<std::size_t>(alt)], c))
        {
            return alt;
        }
    }
    return n.anyOf.empty() && has(mFirstBytes[static_cast<std::size_t>(node)], c) ? node : kNoValue;
}

} // namespace kiln
