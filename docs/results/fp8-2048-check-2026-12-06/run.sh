#!/usr/bin/env bash
# One H100 call (~500 s): the FP8 + FP8 KV 2048/2048 run (500 requests, the sized engine) with
# the one-warp launch for long unsplit decodes (merged 2026-12-06), then on its engine decode
# steps of 167 sequences at ~3,072 tokens, timed as CUDA graphs and by kernel
# (tests/gpu/speed_check.py --prompt 3072). On 2026-12-05 the run's decode-only steps took
# 19.15 ms where the same step's kernels sum to 16.6 ms (15.7 with the new launch): the graphed
# step at that context says whether the ~2.5 ms between them are the executor's or the run's.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/fp8-2048-check}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
export KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8
timeout ${BENCH_TIMEOUT:-400} bash scripts/bench_gpu.sh 2048:2048:500:0:0 > "$LOG/bench.log" 2>&1
echo "bench rc $?"
grep -E "sizing|output tok/s|decode-only|with prompt tokens|CUDA graphs" "$LOG/bench.log"
cp build/bench/*.json "$LOG/" 2>/dev/null
timeout ${SPEED_TIMEOUT:-170} python3 tests/gpu/speed_check.py --engine engines/llama-3.1-8b-fp8-kvfp8-sized \
  --batches 167 --prompt 3072 --steps 48 --profile --profile-batches 167 > "$LOG/speed-167x3072.log" 2>&1
echo "speed rc $?"
grep -E "ms/step|all kernels|paged_decode_kernel" "$LOG/speed-167x3072.log"
