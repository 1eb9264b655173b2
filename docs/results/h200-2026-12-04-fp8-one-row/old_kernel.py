"""Runs tests/gpu/gemm_sweep.py with the one-row kernel of before (builder/kernels/gemm.py as of
8ca1072) in place of gemv_kernel: python old_kernel.py [gemm_sweep's arguments].

The kernel of before is read from gemm_before.py beside this file when it is there (a machine
without the repository's history: write it first with
`git show 8ca1072:builder/kernels/gemm.py > gemm_before.py`, and it travels with the tree),
else from git."""
import importlib.util
import pathlib
import runpy
import subprocess
import sys
import tempfile

from kiln.builder.kernels import gemm

here = pathlib.Path(__file__).resolve().parent
source = here / "gemm_before.py"
if not source.is_file():
    text = subprocess.run(["git", "show", "8ca1072:builder/kernels/gemm.py"], cwd=here,
                          check=True, capture_output=True, text=True).stdout
    source = pathlib.Path(tempfile.mkdtemp()) / "gemm_before.py"
    source.write_text(text)
spec = importlib.util.spec_from_file_location("gemm_before", source)
before = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before)
gemm.gemv_kernel = before.gemv_kernel
sys.argv = [str(here.parents[2] / "tests/gpu/gemm_sweep.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
