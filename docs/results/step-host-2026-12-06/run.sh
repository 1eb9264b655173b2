#!/usr/bin/env bash
# One H100 call (~450 s), the second of two (the first: run-first.sh; this one ran on an H200:
# h200-2026-12-06-second): the cost of choosing a cuBLASLt algorithm for a new M
# (choice_cost.cpp), then two changes (B: the
# tree with variant.diff applied, `git apply docs/results/step-host-2026-12-06/variant.diff`
# first) against the tree without them (A: variant.diff reversed), on BF16 + FP8 KV 128/128
# (3,000 requests):
#  - a new M above the timed range runs the cuBLASLt algorithm picked at a nearby M of the shape,
#    checked with cublasLtMatmulAlgoCheck, where A called the heuristic for every new M;
#  - ModelRunner captures the greedy decode graphs of its batch buckets at load, with their GEMM
#    choices (those whose launch shape is the same at any context length), where A captured
#    each, and made its choices, in the first step of its shape with the GPU idle (59 over the
#    run: ~0.54 s of the 20.5, h100-2026-12-06-first).
# One engine, sized as bench_gpu.sh sizes it; runs B A B A, the load timed, then the graph,
# runtime and engine GPU tests on B as time allows (LIMIT, default 590 s). A is built as a wheel
# beside the build and installed for its runs; B's editable install back for its. Logs packed
# into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/step-host-2026-12-06
. docs/results/fp8_ab.sh
one_call step-host
# ONLY_B=1: B's run alone (no wheel A, no A runs), for a call with little time.
[ "${ONLY_B:-0}" = 1 ] || wheel_a_beside
g++ -O2 -std=c++17 "$D/choice_cost.cpp" -I/usr/local/cuda/include -L/usr/local/cuda/lib64 -lcublasLt \
  -lcudart -o /tmp/choice_cost && /tmp/choice_cost > "$LOG/choice_cost.log" 2>&1; cat "$LOG/choice_cost.log"
kvfp8_128_abab
use B
timeout 60 python3 -c "import time; t = time.time()
from kiln.runtime import ModelRunner
r = ModelRunner.from_dir('$E', device='cuda', kv_cache_free_gpu_memory_fraction=0.9)
print(f'ModelRunner.from_dir {time.time() - t:.2f} s', r.backend.graph_stats())" > "$LOG/load.log" 2>&1
at "load rc $?"; tail -1 "$LOG/load.log"
timeout $(( ${LIMIT:-590} - ($(date +%s) - T0) )) python3 -m pytest -q -m gpu tests/gpu/test_graphs.py \
  tests/gpu/test_runtime_gpu.py tests/gpu/test_engines.py -p no:cacheprovider > "$LOG/tests.log" 2>&1
at "tests rc $?"; tail -3 "$LOG/tests.log"
