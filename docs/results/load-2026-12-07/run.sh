#!/usr/bin/env bash
# One GPU call (~130 s on an H100): the load of an 8B engine by part, A (the tree without
# upload.diff) against B (with it: the weights copied into the pinned staging buffers on up to 8
# threads), on a tree that holds the diff (main since it merged; A: the diff reversed). Builds the
# BF16 Llama-3.1-8B-shaped engine of bench_gpu.sh (max batch 256), then times, A B A B, in fresh
# processes: the imports, load_engine (the blobs' CRC-32s on up to 16 threads since 7e9c184),
# the PlanExecutor, prepare_gemms_ahead, and ModelRunner.from_dir whole; then the graph and
# runtime GPU tests on B as time allows (LIMIT, default 560 s). Logs packed into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/load-2026-12-07
VARIANT=$D/upload.diff
. docs/results/fp8_ab.sh
one_call load-parts
wheel_a_beside
E=$PWD/engines/llama-3.1-8b-bf16
timeout 200 engine-build --random-weights llama-3.1-8b --dtype bfloat16 --output $E --overwrite \
  --max-batch-size 256 --max-seq-len 4096 --max-num-tokens 8192 > "$LOG/build.log" 2>&1
at "build rc $?"; tail -1 "$LOG/build.log"
wait $wheel; tail -1 "$LOG/wheel-a.log"
parts() {  # parts NAME: the load of E by part, in a fresh process, on the tree NAME starts with
  use "${1:0:1}"
  timeout 90 python3 -c "import time; t0 = time.time()
from kiln import _core
from kiln.builder.engine import load_engine
from kiln.runtime import ModelRunner
t1 = time.time(); e = load_engine('$E'); t2 = time.time()
b = _core.PlanExecutor(e, 0.9, None, cuda_graphs=True); t3 = time.time()
n = b.prepare_gemms_ahead(256, 8192); t4 = time.time()
del b, e
r = ModelRunner.from_dir('$E', device='cuda', kv_cache_free_gpu_memory_fraction=0.9); t5 = time.time()
print(f'$1: imports {t1 - t0:.2f} s, load_engine {t2 - t1:.2f} s, PlanExecutor {t3 - t2:.2f} s, '
      f'prepare_gemms_ahead {t4 - t3:.2f} s ({n}), then ModelRunner.from_dir {t5 - t4:.2f} s')" \
    >> "$LOG/parts.log" 2>&1
  at "parts $1 rc $?"; tail -1 "$LOG/parts.log"
}
for n in A1 B1 A2 B2; do parts $n; done
timeout $(( ${LIMIT:-560} - ($(date +%s) - T0) )) python3 -m pytest -q -m gpu tests/gpu/test_graphs.py \
  tests/gpu/test_runtime_gpu.py -p no:cacheprovider > "$LOG/tests.log" 2>&1
at "tests rc $?"; tail -3 "$LOG/tests.log"
