#!/usr/bin/env bash
# One H100 call (~170 s on the machine kv-fraction-2026-12-06/run.sh left warm, whose engine and
# dataset it reuses; ~300 s on a fresh one, which builds them): the FP8 + FP8 KV 2048/2048 run's
# steps with prompt tokens by kernel. Its first 250 requests (one wave, the cache at 0.95 of
# free memory) with their steps 10-19 traced (`engine-bench throughput --profile-steps`): the
# wave's prompts, ~3.8 of 2,048 tokens a step beside the decodes of those admitted before.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/fp8-prompt-profile}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
E=engines/llama-3.1-8b-fp8-kvfp8-sized
if [ ! -f "$E/config.json" ] || [ ! -f data/2048-2048-500.jsonl ]; then
  KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 KILN_BENCH_KV_FRACTION=0.95 KILN_BENCH_BUILD_ONLY=1 \
    timeout 250 bash scripts/bench_gpu.sh 2048:2048:500:0:0 > "$LOG/build.log" 2>&1
  echo "build rc $?"; tail -3 "$LOG/build.log"
fi
timeout 200 python3 -m kiln.runtime.bench throughput --engine "$E" --dataset data/2048-2048-500.jsonl \
  --num-requests 250 --max-batch-size 250 --kv-cache-free-gpu-memory-fraction 0.95 \
  --profile-steps 10:10 --json "$LOG/run.json" > "$LOG/run.log" 2>&1
echo "run rc $?"
grep -v "Warn\|_warn_once" "$LOG/run.log" | grep -E -A20 "output tok/s|by kernel" | cut -c1-120
