#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::gpu
{

/// @brief Names of the integer symbols an expression may use; an expression refers to them by
/// index, so evaluation is a walk over a small vector.
class SymbolTable
{
public:
    /// @brief The index of `name`, added when new.
    int add(std::string const& name);
    /// @brief The index of `name`, or -1.
    [[nodiscard]] int find(std::string_view name) const;
    [[nodiscard]] std::size_t size() const
    {
        return mNames.size();
    }
    [[nodiscard]] std::string const& name(int index) const
    {
        return mNames.at(static_cast<std::size_t>(index));
    }

private:
    std::vector<std::string> mNames;
};

/// @brief An integer expression over symbols, in the grammar of kiln.builder.kernels.symbols:
/// integers, symbols, `+ - * // %`, comparisons, `and`, `or`, `not`, `cdiv(a, b)`, `min(...)`,
/// `max(...)`, parentheses. Parsed once, evaluated per step.
class Expr
{
public:
    Expr() = default;
    /// @brief Parses `text`; throws std::invalid_argument naming the expression on a syntax
    /// error or an unknown symbol.
    [[nodiscard]] static Expr parse(std::string_view text, SymbolTable const& symbols);
    /// @brief The value under `values` (indexed like the SymbolTable); throws
    /// std::invalid_argument on division by zero.
    [[nodiscard]] std::int64_t eval(std::vector<std::int64_t> const& values) const;
    /// @brief The symbol indices the expression reads.
    [[nodiscard]] std::vector<std::size_t> symbols() const
    {
        std::vector<std::size_t> out;
        for (Op const& op : mCode)
        {
            if (op.kind == Kind::Symbol)
            {
                out.push_back(static_cast<std::size_t>(op.value));
            }
        }
        return out;
    }
    [[nodiscard]] std::string const& text() const
    {
        return mText;
    }

    enum class Kind : std::uint8_t
    {
        Const, Symbol, Add, Sub, Mul, FloorDiv, Mod, Eq, Ne, Lt, Le, Gt, Ge, And, Or, Not, Cdiv, Min, Max
    };
    struct Op
    {
        Kind kind;
        std::int64_t value = 0; ///< constant, symbol index, or argument count of min/max
    };

private:
    std::vector<Op> mCode; // postfix
    std::string mText;
};

} // namespace kiln::gpu
