#!/usr/bin/env bash
# One H100 call (~420 s), prepared: the decode graphs captured at load, now that the GEMM
# choices are made there (prepare_gemms_ahead) exactly as a step would make them. Apply
# capture.diff first (`git apply docs/results/capture-2026-12-07/capture.diff`): B is the tree,
# A the tree with the diff reversed (main). ModelRunner then captures, after its choices, the
# graph of every greedy decode batch bucket whose launch shape is the same at any context
# length (`PlanExecutor.capture_graphs`), so the ~58 captures of a 128/128 run (~3.2 ms each, the
# GPU idle) happen before the first request. BF16 + FP8 KV 128/128 (3,000 requests), one engine
# sized as bench_gpu.sh sizes it (max batch 3,488), B A B A; then `ModelRunner.from_dir` of
# that engine on each (after the imports, in fresh processes), and the graph and runtime GPU
# tests on B as time allows (LIMIT, default 590 s). Logs packed into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/capture-2026-12-07
VARIANT=$D/capture.diff
. docs/results/fp8_ab.sh
one_call capture-at-load
wheel_a_beside
kvfp8_128_abab
load_time() {  # load_time A|B: ModelRunner.from_dir on that tree, the imports apart
  use $1
  timeout 60 python3 -c "import time; t0 = time.time()
from kiln.runtime import ModelRunner
t = time.time()
r = ModelRunner.from_dir('$E', device='cuda', kv_cache_free_gpu_memory_fraction=0.9)
print(f'$1: imports {t - t0:.2f} s, ModelRunner.from_dir {time.time() - t:.2f} s,',
      len(r.backend.gemm_choices()), 'GEMM choices,', r.backend.graph_stats())" \
    >> "$LOG/load.log" 2>&1
  at "load $1 rc $?"; tail -1 "$LOG/load.log"
}
load_time A
load_time B
timeout $(( ${LIMIT:-590} - ($(date +%s) - T0) )) python3 -m pytest -q -m gpu \
  tests/gpu/test_graphs.py tests/gpu/test_runtime_gpu.py -p no:cacheprovider > "$LOG/tests.log" 2>&1
at "tests rc $?"; tail -3 "$LOG/tests.log"
