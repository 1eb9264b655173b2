#!/usr/bin/env bash
# One H100 call (~450 s; at most ~540): FP8 + FP8 KV 2048/2048 (500 requests) with the KV cache at 0.95 of
# free memory (B) against 0.9 (A), on one engine. At 0.9 the cache holds ~249 sequences of
# 4,095 tokens (31,976 blocks, 2026-12-06), the sizing's estimate ~242, so the run goes in
# three equal waves of 167; at 0.95 the estimate is ~253 and the run goes in two waves of 250
# (the cache then ~33,700 blocks against the 32,000 they take at their longest). Both runs size
# with their own fraction and the engine's limits come out alike (max batch 256, max num tokens
# 8,192, max seq len 4,096), so B builds it and A runs on it. B first: it is the experiment.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/kv-fraction}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8
E=engines/llama-3.1-8b-fp8-kvfp8-sized
for v in B:0.95:320 A:0.9:180; do
  IFS=: read -r name fraction limit <<< "$v"
  [ "$name" = A ] && export KILN_BENCH_ENGINE=$E
  KILN_BENCH_KV_FRACTION=$fraction OUT=/tmp/bench-$name timeout "$limit" \
    bash scripts/bench_gpu.sh 2048:2048:500:0:0 > "$LOG/bench-$name.log" 2>&1
  echo "$name ($fraction) rc $?"
  grep -E "sizing|== throughput|output tok/s|peak batch|decode-only|with prompt tokens" "$LOG/bench-$name.log"
  cp /tmp/bench-$name/bench/throughput-2048-2048-fp8-kvfp8.json "$LOG/throughput-$name.json" 2>/dev/null
done
