#!/usr/bin/env bash
# One H100 call (~480 s): the steps of the BF16 + FP8 KV 128/128 run (18,273.3 output tok/s,
# 2026-12-06) by kernel, on an engine sized as that run's. Its decode-only steps took 73.78 ms
# at ~2,037 sequences against a floor of 52.74 (GEMMs 42.70 at the 8192-cubed matmul rate,
# decode attention 10.04), its prompt steps 191.40 ms against 145.17; neither has been profiled
# on an H100. The run again with its decode-only steps 100-109 traced by kernel
# (engine-bench throughput --profile-steps: the GPU's busy time against the steps' wall time),
# then speed_check: decode steps of 2,048 sequences after 128-token prompts, by kernel, and a
# step of 50 prompts of 128 beside 1,792 decodes at 192 tokens (the run's prompt step). Logs
# into $OUT.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/bf16-kvfp8-128-profile}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
# --profile-steps' own GPU test first (a tiny engine, ~30 s).
timeout 90 python3 -m pytest -q -m gpu tests/gpu/test_runtime_gpu.py -k by_kernel \
  > "$LOG/test-profile-steps.log" 2>&1
echo "test rc $?"; tail -2 "$LOG/test-profile-steps.log"
KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 200 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
  > "$LOG/build.log" 2>&1
echo "build rc $?"; tail -4 "$LOG/build.log"
# The run itself, its decode-only steps 100-109 (~2,300 sequences) traced by kernel.
timeout 120 python3 -m kiln.runtime.bench throughput --engine engines/llama-3.1-8b-bf16-kvfp8-sized \
  --dataset data/128-128-3000.jsonl --profile-steps 100:10 --json "$LOG/run.json" \
  > "$LOG/run.log" 2>&1
echo "run rc $?"
grep -v "Warn\|_warn_once" "$LOG/run.log" | grep -E -A18 "output tok/s|by kernel" | cut -c1-120
timeout ${SPEED_TIMEOUT:-200} python3 tests/gpu/speed_check.py \
  --engine engines/llama-3.1-8b-bf16-kvfp8-sized --batches 2048 --prompt 128 --steps 32 \
  --profile --profile-batches 2048 --profile-mixed 50:128:1792:192 > "$LOG/speed.log" 2>&1
echo "speed rc $?"
grep -v "Warn\|_warn_once" "$LOG/speed.log" | grep -E -A16 "by kernel" | cut -c1-120
grep "ms/step" "$LOG/speed.log"
