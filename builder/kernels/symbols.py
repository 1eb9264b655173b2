"""Integer expressions over a step's symbols: grids, kernel arguments and launch conditions.

The C++ plan executor evaluates the same grammar (csrc/gpu/expr.cpp) once per step:
integers, symbols, `+ - * // %`, comparisons, `and`/`or`/`not`, `cdiv(a, b)`, `min(...)`,
`max(...)` and parentheses. All values are non-negative integers; comparisons give 0 or 1.

Symbols of a step: T (tokens), B (sequences), MAXCTX (longest context after the step), MAXQ
(most query tokens of one sequence), MAXBLK (block-table row length), NSM (the GPU's
multiprocessors), BD (how many sequences, from the first, have one query token each: the
decodes, which the scheduler puts first), LOGITS (1 when the host reads float32 logits rows
after the step, 0 when it reads only the greedy picks). A plan may add resident symbols (R0,
R1, ...: how many programs of one of its kernels the GPU runs at once, its occupancy a
multiprocessor times NSM, which the executor counts when it loads the kernels) and derived
symbols (evaluated in order, each from the ones before).
"""
from __future__ import annotations

import ast
from typing import Mapping

STEP_SYMBOLS = ("T", "B", "MAXCTX", "MAXQ", "MAXBLK", "NSM", "BD", "LOGITS")

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b,
           ast.Mod: lambda a, b: a % b}
_CMPOPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
           ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
           ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b}
_CALLS = {"cdiv": lambda a, b: -(-a // b), "min": min, "max": max}


def leading_decodes(query_start) -> int:
    """BD of a step whose query_start is given: how many sequences, from the first, have one
    query token each (csrc/gpu/plan_executor.cpp counts it the same way)."""
    starts = [int(x) for x in query_start]
    n = 0
    while n + 1 < len(starts) and starts[n + 1] - starts[n] == 1:
        n += 1
    return n


def evaluate(expr: str | int, symbols: Mapping[str, int]) -> int:
    """The value of `expr` (an int or an expression string) under `symbols`."""
    if isinstance(expr, int):
        return expr
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ValueError(f"bad expression {expr!r}") from None
    return int(_eval(tree.body, symbols, expr))


def check(expr: str | int, names: set[str] | frozenset[str]) -> None:
    """Raises ValueError unless `expr` parses in the grammar and uses only `names`."""
    if isinstance(expr, int):
        return
    evaluate(expr, {name: 1 for name in names})


def _eval(node: ast.AST, symbols: Mapping[str, int], text: str) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in symbols:
            raise ValueError(f"unknown symbol {node.id!r} in {text!r}")
        return int(symbols[node.id])
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        right = _eval(node.right, symbols, text)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError(f"division by zero in {text!r}")
        return _BINOPS[type(node.op)](_eval(node.left, symbols, text), right)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        return int(_CMPOPS[type(node.ops[0])](_eval(node.left, symbols, text),
                                              _eval(node.comparators[0], symbols, text)))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, symbols, text) for v in node.values]
        return int(all(values)) if isinstance(node.op, ast.And) else int(any(values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return int(not _eval(node.operand, symbols, text))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS
            and not node.keywords and node.args):
        args = [_eval(a, symbols, text) for a in node.args]
        if node.func.id == "cdiv":
            if len(args) != 2 or args[1] == 0:
                raise ValueError(f"cdiv takes two arguments, the second non-zero, in {text!r}")
        return int(_CALLS[node.func.id](*args))
    raise ValueError(f"unsupported expression {ast.unparse(node)!r} in {text!r}")
