"""Plan expressions: the Python evaluator (kiln.builder.kernels.symbols) and the C++ plan
executor's (kiln._core.gpu.eval_expr) agree on random expressions and refuse the same errors."""
import random

import pytest

from kiln.builder.kernels.attention import splits_formula
from kiln.builder.kernels.symbols import check, evaluate, leading_decodes

SYMBOLS = {"T": 37, "B": 5, "MAXCTX": 4000, "MAXQ": 1, "MAXBLK": 128, "NSM": 132, "S0": 3}


def test_leading_decodes_counts_one_token_sequences_from_the_first():
    assert leading_decodes([0, 1, 2, 9, 10]) == 2  # two decodes, a prompt chunk, a decode
    assert leading_decodes([0, 1, 2, 3]) == 3  # a decode-only step
    assert leading_decodes([0, 7, 8]) == 0  # a prompt chunk first
    assert leading_decodes([0]) == 0
    # The decode kernel's splits in a step without decodes: defined, as for one decode (its
    # grid is then empty).
    assert evaluate(splits_formula(8, 64), dict(SYMBOLS, BD=0)) == 32
    assert evaluate(splits_formula(8, 64), dict(SYMBOLS, BD=2, MAXCTX=4000)) == 17


def random_expr(rng: random.Random, depth: int = 0) -> str:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice([str(rng.randint(1, 300)), rng.choice(list(SYMBOLS))])
    kind = rng.randrange(6)
    a, b = random_expr(rng, depth + 1), random_expr(rng, depth + 1)
    if kind == 0:
        return f"{a} {rng.choice(['+', '*', '//', '%'])} ({b})"
    if kind == 1:
        return f"cdiv({a}, {b})"
    if kind == 2:
        return f"{rng.choice(['min', 'max'])}({a}, {b}, {random_expr(rng, depth + 1)})"
    if kind == 3:
        return f"({a}) {rng.choice(['==', '!=', '<', '<=', '>', '>='])} ({b})"
    if kind == 4:
        return f"(({a}) > 7) {rng.choice(['and', 'or'])} not (({b}) < 3)"
    return f"({a}) - ({b})"


def test_python_evaluator_examples():
    assert evaluate("T // 16 + B", SYMBOLS) == 7
    assert evaluate("max(1, min(32, cdiv(2 * NSM, B * 8), cdiv(MAXCTX, 128)))", SYMBOLS) == 7
    assert evaluate("MAXQ == 1 and S0 > 1", SYMBOLS) == 1
    assert evaluate(12, SYMBOLS) == 12
    for bad in ("T +", "foo(T)", "T ** 2", "X + 1", "T / 2", "cdiv(T)", "T // 0", "1 < T < 9"):
        with pytest.raises(ValueError):
            evaluate(bad, SYMBOLS)
    check("cdiv(T, 16) * B", {"T", "B"})
    with pytest.raises(ValueError, match="unknown symbol"):
        check("T + Q", {"T"})


def test_cpp_evaluator_agrees_with_python():
    core = pytest.importorskip("kiln._core")
    if not hasattr(core, "gpu"):
        pytest.skip("kiln._core was built without the GPU plan executor (no CUDA toolkit)")
    rng = random.Random(0)
    for _ in range(500):
        expr = random_expr(rng)
        try:
            want = evaluate(expr, SYMBOLS)
        except ValueError:  # division by zero: the C++ side must refuse too
            with pytest.raises(Exception, match="division by zero"):
                core.gpu.eval_expr(expr, SYMBOLS)
            continue
        assert core.gpu.eval_expr(expr, SYMBOLS) == want, expr
    for bad in ("T +", "foo(T)", "X + 1", "cdiv(T)", "1 < T < 9"):
        with pytest.raises(Exception, match="bad expression"):
            core.gpu.eval_expr(bad, SYMBOLS)
