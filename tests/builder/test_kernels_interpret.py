"""The Triton kernels' arithmetic, run by Triton's interpreter on the CPU, against the ops'
torch references (tests/gpu/kernel_checks.py, in one subprocess started with
TRITON_INTERPRET=1). bfloat16 attention is left to the GPU tests: the interpreter does not
support bfloat16 matrix products."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

sys.path.insert(0, str(Path(__file__).parents[1] / "gpu"))
import kernel_checks  # noqa: E402

CASES = {name: bound for name, _, _, bound in kernel_checks.interpreter_cases()}


@pytest.fixture(scope="module")
def results():
    script = Path(kernel_checks.__file__)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


OLD_INTERPRETER = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 9)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(results, name):
    if OLD_INTERPRETER and name.startswith("attention"):
        pytest.skip("Triton < 3.9's interpreter cannot loop over bounds loaded from memory")
    value, bound = results[name]
    assert not isinstance(value, str), value
    for v in (value if isinstance(value, list) else [value]):
        assert v <= bound, f"{name}: error {v} above {bound}"
