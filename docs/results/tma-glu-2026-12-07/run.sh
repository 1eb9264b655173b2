#!/usr/bin/env bash
# One GPU call (~6 min on an H100): Kiln installed; the GPU tests the TMA GEMM and the gate/up
# rows in pairs touch (tests/gpu/test_tma_gemm.py, the Llama-3.1-8B slice against HF, the graph
# and runtime tests with an engine built on a CPU-only machine) beside the build of the sized
# BF16 + FP8 KV engine (scripts/bench_gpu.sh); then that engine's 128/128 run (3,000 requests)
# twice around the GEMM choices it made at load (choices.py). Logs in $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
. docs/results/fp8_ab.sh
one_call tma-glu
use() { :; }  # one tree, installed editable
(KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 240 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
  > "$LOG/build.log" 2>&1; echo "build rc $?" >> "$LOG/build.log") &
build=$!
# The engine built with the GPU hidden, ready before the runtime tests (the last file) start.
sm=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
(CUDA_VISIBLE_DEVICES="" python3 -c "import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from kiln_testing import make_tiny_checkpoint
make_tiny_checkpoint('llama', Path('/tmp/kiln-cpu-built/hf'))" &&
 CUDA_VISIBLE_DEVICES="" engine-build --checkpoint /tmp/kiln-cpu-built/hf --overwrite \
   --output /tmp/kiln-cpu-built/engine --dtype float32 --target-sm "$sm" --max-seq-len 64 \
   --quiet) > "$LOG/cpu-built.log" 2>&1 &
KILN_CPU_BUILT_ENGINE=/tmp/kiln-cpu-built timeout ${TESTS_TIMEOUT:-260} python3 -m pytest -m gpu -q \
  -p no:cacheprovider tests/gpu/test_tma_gemm.py tests/gpu/test_llama8b_slice.py \
  tests/gpu/test_graphs.py tests/gpu/test_runtime_gpu.py > "$LOG/tests.log" 2>&1
at "tests rc $?: $(tail -n 1 "$LOG/tests.log")"
grep -E "^(FAILED|ERROR)" "$LOG/tests.log" | head -20
wait $build; at "$(tail -n 1 "$LOG/build.log")"
E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
data=$PWD/data/128-128-3000.jsonl
throughput B1 "$E" "$data"
timeout 60 python3 docs/results/tma-glu-2026-12-07/choices.py "$E" > "$LOG/choices.log" 2>&1
at "choices rc $?"; cat "$LOG/choices.log" | cut -c1-220 | head -30
[ $(( $(date +%s) - T0 )) -lt "${B2_BEFORE:-470}" ] && throughput B2 "$E" "$data"
# Tiles that fill the last wave at 3,008 rows (the decode-only steps'): 64-row blocks.
[ $(( $(date +%s) - T0 )) -lt "${SWEEP_BEFORE:-400}" ] && SWEEP_TIMEOUT=90 \
  bash docs/results/glu-gemm-2026-12-07/run.sh --m 3008 --glu "" --plain "" \
  --pairs 64:128:64:3:4:8:0,64:128:64:4:4:8:0,128:128:64:3:8:4:0 > "$LOG/sweep-3008.log" 2>&1 \
  && tail -6 "$LOG/sweep-3008.log"
at done
