"""The quantized-op kernels' arithmetic, run by Triton's interpreter on the CPU, against the
ops' torch references (tests/gpu/quant_kernel_checks.py, in one subprocess started with
TRITON_INTERPRET=1); and the lowering of each quantized op to launches and GEMMs.

Its float32 -> fp8e4nv conversion rounds wrongly where rounding carries into the next power of
two (125.5 -> 64); the kernels round to the e4m3 grid themselves under the interpreter
(rounding.e4m3_grid), so their fp8 codes are checked here too. What the interpreter cannot check
is left to tests/gpu/test_quant_kernels.py and test_wo_kernels.py: its float32 -> bfloat16
conversion truncates instead of rounding to nearest even, and it cannot multiply bfloat16
matrices."""
import sys
from pathlib import Path

import pytest

from kiln_testing import run_interpreted

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

sys.path.insert(0, str(Path(__file__).parents[1] / "gpu"))
import quant_kernel_checks  # noqa: E402

CASES = {name: bound for name, _, _, bound in quant_kernel_checks.interpreter_cases()}
BF16_REASON = ("Triton's interpreter truncates float32 -> bfloat16 and cannot multiply "
               "bfloat16 matrices; bfloat16 is checked on the GPU (tests/gpu)")


def skip_reason(name: str) -> str | None:
    exact_bf16 = ("rmsnorm_quant", "silu_mul_quant", "linear_wo")
    if name.endswith("bfloat16") and any(op in name for op in exact_bf16):
        return BF16_REASON
    return None


@pytest.fixture(scope="module")
def results():
    return run_interpreted([quant_kernel_checks.__file__], timeout=900)


@pytest.mark.parametrize("name", list(CASES))
def test_quant_kernel_matches_reference(results, name):
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    value, bound = results[name]
    assert not isinstance(value, str), value
    assert value <= bound, f"{name}: error {value} above {bound}"

