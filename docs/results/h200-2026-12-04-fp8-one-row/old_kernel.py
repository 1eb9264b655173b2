"""Runs tests/gpu/gemm_sweep.py with the one-row kernel of before (gemm_before.py, beside this
file) in place of gemv_kernel: python old_kernel.py [gemm_sweep's arguments]."""
import importlib.util
import pathlib
import runpy
import sys

from kiln.builder.kernels import gemm

here = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("gemm_before", here / "gemm_before.py")
before = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before)
gemm.gemv_kernel = before.gemv_kernel
sys.argv = [str(here.parents[2] / "tests/gpu/gemm_sweep.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
