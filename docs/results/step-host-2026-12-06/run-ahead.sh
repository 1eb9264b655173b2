#!/usr/bin/env bash
# One H100 call (~400 s; run 2026-12-07: h100-2026-12-07-ahead/): B is the tree, which holds
# ahead.diff since 763a823 (before it: `git apply docs/results/step-host-2026-12-06/ahead.diff`
# first), A the tree with it reversed. ModelRunner makes,
# at load, the cuBLASLt choices (the heuristic's pick) of every GEMM of more than 64 rows at each
# decode batch bucket and every 256 of a step's tokens, and runs each once so its kernel is
# loaded (`PlanExecutor.prepare_gemms_ahead`); no graph is captured at load and no algorithm is
# reused from another M. choice_cost.cpp (h200-2026-12-06-second) puts a first matmul with a
# newly picked algorithm at 1.8-2.4 ms against 6-12 us after, the heuristic at ~0.1 ms: a new
# bucket's choices and capture in the run (A) should shrink to the capture alone. BF16 + FP8 KV
# 128/128 (3,000 requests), one engine sized as bench_gpu.sh sizes it, B A B A; then the load
# time of each, and the graph and runtime GPU tests as time allows (LIMIT, default 590 s; TESTS: the test files). Logs
# packed into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/step-host-2026-12-06
VARIANT=$D/ahead.diff
. docs/results/fp8_ab.sh
one_call step-host-ahead
wheel_a_beside
kvfp8_128_abab
load_time() {  # load_time A|B: ModelRunner.from_dir on that tree, timed
  use $1
  timeout 60 python3 -c "import time; t = time.time()
from kiln.runtime import ModelRunner
r = ModelRunner.from_dir('$E', device='cuda', kv_cache_free_gpu_memory_fraction=0.9)
print(f'$1: ModelRunner.from_dir {time.time() - t:.2f} s,', len(r.backend.gemm_choices()), 'GEMM choices')" \
    >> "$LOG/load.log" 2>&1
  at "load $1 rc $?"; tail -1 "$LOG/load.log"
}
load_time A
load_time B
timeout $(( ${LIMIT:-590} - ($(date +%s) - T0) )) python3 -m pytest -q -m gpu \
  ${TESTS:-tests/gpu/test_graphs.py tests/gpu/test_runtime_gpu.py} -p no:cacheprovider > "$LOG/tests.log" 2>&1
at "tests rc $?"; tail -3 "$LOG/tests.log"
