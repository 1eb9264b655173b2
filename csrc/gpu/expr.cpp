#include "gpu/expr.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace kiln::gpu
{

int SymbolTable::add(std::string const& name)
{
    if (int const at = find(name); at >= 0)
    {
        return at;
    }
    mNames.push_back(name);
    return static_cast<int>(mNames.size()) - 1;
}

int SymbolTable::find(std::string_view name) const
{
    auto const it = std::find(mNames.begin(), mNames.end(), name);
    return it == mNames.end() ? -1 : static_cast<int>(it - mNames.begin());
}

namespace
{

using Kind = Expr::Kind;
using Op = Expr::Op;

/// Recursive descent over Python's precedence: or < and < not < comparison < + - < * // %.
class Parser
{
public:
    Parser(std::string_view text, SymbolTable const& symbols, std::vector<Op>& code)
        : mText(text)
        , mSymbols(symbols)
        , mCode(code)
    {
    }

    void parse()
    {
        orExpr();
        skipSpace();
        if (mPos != mText.size())
        {
            fail("unexpected '" + std::string(mText.substr(mPos)) + "'");
        }
    }

private:
    [[noreturn]] void fail(std::string const& what) const
    {
        throw std::invalid_argument("bad expression '" + std::string(mText) + "': " + what);
    }

    void skipSpace()
    {
        while (mPos < mText.size() && std::isspace(static_cast<unsigned char>(mText[mPos])))
        {
            ++mPos;
        }
    }

    bool word(std::string_view w)
    {
        skipSpace();
        if (mText.substr(mPos, w.size()) != w)
        {
            return false;
        }
        std::size_t const end = mPos + w.size();
        if (end < mText.size() && (std::isalnum(static_cast<unsigned char>(mText[end])) || mText[end] == '_'))
        {
            return false;
        }
        mPos = end;
        return true;
    }

    bool punct(std::string_view p)
    {
        skipSpace();
        if (mText.substr(mPos, p.size()) != p)
        {
            return false;
        }
        mPos += p.size();
        return true;
    }

    void orExpr()
    {
        andExpr();
        while (word("or"))
        {
            andExpr();
            mCode.push_back({Kind::Or});
        }
    }

    void andExpr()
    {
        notExpr();
        while (word("and"))
        {
            notExpr();
            mCode.push_back({Kind::And});
        }
    }

    void notExpr()
    {
        if (word("not"))
        {
            notExpr();
            mCode.push_back({Kind::Not});
            return;
        }
        comparison();
    }

    void comparison()
    {
        arith();
        static constexpr std::pair<std::string_view, Kind> kOps[]
            = {{"==", Kind::Eq}, {"!=", Kind::Ne}, {"<=", Kind::Le}, {">=", Kind::Ge}, {"<", Kind::Lt}, {">", Kind::Gt}};
        for (auto const& [text, kind] : kOps)
        {
            if (punct(text))
            {
                arith();
                mCode.push_back({kind});
                return;
            }
        }
    }

    void arith()
    {
        term();
        while (true)
        {
            if (punct("+"))
            {
                term();
                mCode.push_back({Kind::Add});
            }
            else if (punct("-"))
            {
                term();
                mCode.push_back({Kind::Sub});
            }
            else
            {
                return;
            }
        }
    }

    void term()
    {
        atom();
        while (true)
        {
            if (punct("//"))
            {
                atom();
                mCode.push_back({Kind::FloorDiv});
            }
            else if (punct("*"))
            {
                atom();
                mCode.push_back({Kind::Mul});
            }
            else if (punct("%"))
            {
                atom();
                mCode.push_back({Kind::Mod});
            }
            else
            {
                return;
            }
        }
    }

    void atom()
    {
        skipSpace();
        if (punct("("))
        {
            orExpr();
            if (!punct(")"))
            {
                fail("missing ')'");
            }
            return;
        }
        if (mPos < mText.size() && std::isdigit(static_cast<unsigned char>(mText[mPos])))
        {
            std::int64_t value = 0;
            while (mPos < mText.size() && std::isdigit(static_cast<unsigned char>(mText[mPos])))
            {
                value = value * 10 + (mText[mPos++] - '0');
            }
            mCode.push_back({Kind::Const, value});
            return;
        }
        std::size_t const start = mPos;
        while (mPos < mText.size() && (std::isalnum(static_cast<unsigned char>(mText[mPos])) || mText[mPos] == '_'))
        {
            ++mPos;
        }
        if (start == mPos)
        {
            fail(mPos < mText.size() ? "unexpected '" + std::string(1, mText[mPos]) + "'" : "unexpected end");
        }
        std::string_view const name = mText.substr(start, mPos - start);
        if (punct("("))
        {
            call(name);
            return;
        }
        int const index = mSymbols.find(name);
        if (index < 0)
        {
            fail("unknown symbol '" + std::string(name) + "'");
        }
        mCode.push_back({Kind::Symbol, index});
    }

    void call(std::string_view name)
    {
        Kind kind{};
        if (name == "cdiv")
        {
            kind = Kind::Cdiv;
        }
        else if (name == "min")
        {
            kind = Kind::Min;
        }
        else if (name == "max")
        {
            kind = Kind::Max;
        }
        else
        {
            fail("unknown function '" + std::string(name) + "'");
        }
        std::int64_t argc = 0;
        do
        {
            orExpr();
            ++argc;
        } while (punct(","));
        if (!punct(")"))
        {
            fail("missing ')' after the arguments of " + std::string(name));
        }
        if (kind == Kind::Cdiv && argc != 2)
        {
            fail("cdiv takes two arguments");
        }
        mCode.push_back({kind, argc});
    }

    std::string_view mText;
    SymbolTable const& mSymbols;
    std::vector<Op>& mCode;
    std::size_t mPos = 0;
};

std::int64_t floorDiv(std::int64_t a, std::int64_t b)
{
    std::int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
    {
        --q;
    }
    return q;
}

} // namespace

Expr Expr::parse(std::string_view text, SymbolTable const& symbols)
{
    Expr expr;
    expr.mText = std::string(text);
    Parser(text, symbols, expr.mCode).parse();
    return expr;
}

std::int64_t Expr::eval(std::vector<std::int64_t> const& values) const
{
    std::int64_t stack[32];
    int top = 0;
    auto pop = [&]() { return stack[--top]; };
    for (Op const& op : mCode)
    {
        if (top >= 32)
        {
            throw std::invalid_argument("expression '" + mText + "' is too deeply nested");
        }
        std::int64_t result = 0;
        switch (op.kind)
        {
        case Kind::Const: result = op.value; break;
        case Kind::Symbol: result = values.at(static_cast<std::size_t>(op.value)); break;
        case Kind::Not: result = pop() == 0; break;
        case Kind::Min:
        case Kind::Max:
        {
            result = pop();
            for (std::int64_t i = 1; i < op.value; ++i)
            {
                std::int64_t const v = pop();
                result = op.kind == Kind::Min ? std::min(result, v) : std::max(result, v);
            }
            break;
        }
        default:
        {
            std::int64_t const b = pop();
            std::int64_t const a = pop();
            if ((op.kind == Kind::FloorDiv || op.kind == Kind::Mod || op.kind == Kind::Cdiv) && b == 0)
            {
                throw std::invalid_argument("division by zero in '" + mText + "'");
            }
            switch (op.kind)
            {
            case Kind::Add: result = a + b; break;
            case Kind::Sub: result = a - b; break;
            case Kind::Mul: result = a * b; break;
            case Kind::FloorDiv: result = floorDiv(a, b); break;
            case Kind::Mod: result = a - floorDiv(a, b) * b; break;
            case Kind::Cdiv: result = -floorDiv(-a, b); break;
            case Kind::Eq: result = a == b; break;
            case Kind::Ne: result = a != b; break;
            case Kind::Lt: result = a < b; break;
            case Kind::Le: result = a <= b; break;
            case Kind::Gt: result = a > b; break;
            case Kind::Ge: result = a >= b; break;
            case Kind::And: result = (a != 0) && (b != 0); break;
            case Kind::Or: result = (a != 0) || (b != 0); break;
            default: throw std::logic_error("unreachable expression op");
            }
        }
        }
        stack[top++] = result;
    }
    if (top != 1)
    {
        throw std::invalid_argument("expression '" + mText + "' is empty or malformed");
    }
    return stack[0];
}

} // namespace kiln::gpu
