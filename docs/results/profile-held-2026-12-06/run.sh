#!/usr/bin/env bash
# One H100 call (~220 s on a fresh machine): engine-bench throughput --profile-steps with the
# executor held for the trace's start and stop (Executor.pause). Its first GPU run (2026-12-06)
# failed both ways: CUPTI attaching while the executor's thread launched kernels (segfault in
# the GPU test) and the trace's stop synchronising while that thread captured a CUDA graph
# (cudaErrorStreamCaptureUnsupported in the BF16 + FP8 KV 128/128 run). The GPU test, then the
# BF16 128/128 run (3,000 requests at once, 16-bit cache: 17,170.3 output tok/s on 2026-12-06)
# with its decode-only steps 100-109 traced: the GPU's busy time against the steps' wall time.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/profile-held}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
t0=$(date +%s)
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
echo "install $(( $(date +%s) - t0 )) s"
timeout 80 python3 -m pytest -q -m gpu tests/gpu/test_runtime_gpu.py -k by_kernel \
  > "$LOG/test-profile-steps.log" 2>&1
echo "test rc $? at $(( $(date +%s) - t0 )) s"; tail -2 "$LOG/test-profile-steps.log"
KILN_BENCH_BUILD_ONLY=1 timeout 100 bash scripts/bench_gpu.sh 128:128:3000:0:0 > "$LOG/build.log" 2>&1
echo "build rc $? at $(( $(date +%s) - t0 )) s"; tail -3 "$LOG/build.log"
timeout 90 python3 -m kiln.runtime.bench throughput --engine engines/llama-3.1-8b-bf16-sized \
  --dataset data/128-128-3000.jsonl --profile-steps 100:10 --json "$LOG/run.json" \
  > "$LOG/run.log" 2>&1
echo "run rc $? at $(( $(date +%s) - t0 )) s"
grep -v "Warn\|_warn_once" "$LOG/run.log" | grep -E -A20 "output tok/s" | cut -c1-120
