"""Loads an engine as engine-bench does (ModelRunner.from_dir: the GEMM choices made ahead and the
decode graphs captured) and prints the load time and the timed choices of its gate/up GEMMs over
many rows: cuBLASLt then the SiLU-mul's launch against the TMA GEMM writing silu(gate) * up.

    python docs/results/tma-glu-2026-12-07/choices.py ENGINE_DIR
"""
import sys
import time

from kiln.runtime.model_runner import ModelRunner

start = time.perf_counter()
with ModelRunner.from_dir(sys.argv[1], device="cuda") as runner:
    print(f"from_dir {time.perf_counter() - start:.2f} s")
    for c in runner.backend.gemm_choices():
        if c["m"] > 16 and "timed over" in c["algorithm"]:
            print(f"M {c['m']:>5}  N {c['n']:>6}  K {c['k']:>5}  {c['algorithm']}")
