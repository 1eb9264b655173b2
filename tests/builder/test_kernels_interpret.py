"""The Triton kernels' arithmetic, run by Triton's interpreter on the CPU, against the ops'
torch references (tests/gpu/kernel_checks.py, in one subprocess started with
TRITON_INTERPRET=1). bfloat16 attention is left to the GPU tests: the interpreter does not
support bfloat16 matrix products."""
import sys
from pathlib import Path

import pytest

from kiln_testing import run_interpreted

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

sys.path.insert(0, str(Path(__file__).parents[1] / "gpu"))
import kernel_checks  # noqa: E402

CASES = {name: bound for name, _, _, bound in kernel_checks.interpreter_cases()}


@pytest.fixture(scope="module")
def results():
    return run_interpreted([kernel_checks.__file__], timeout=1200)


OLD_INTERPRETER = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 9)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(results, name):
    if OLD_INTERPRETER and name.startswith("attention"):
        pytest.skip("Triton < 3.9's interpreter cannot loop over bounds loaded from memory")
    value, bound = results[name]
    assert not isinstance(value, str), value
    for v in (value if isinstance(value, list) else [value]):
        assert v <= bound, f"{name}: error {v} above {bound}"
