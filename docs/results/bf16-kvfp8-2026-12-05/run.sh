#!/usr/bin/env bash
# BF16 weights with an FP8 KV cache (--kv-cache-dtype fp8, no --quant) on an 80 GB H100: the
# engine sized for the sets, then each (no HF baseline), as the 16-bit-cache runs of
# docs/results/h100-2026-12-05-throughput. Two device calls, each building its own engine
# (the cache's sequences at 4,096 tokens and at 256 size them far apart):
#   run.sh long    2048/2048 (500 requests) and 2048/128 (1,000)
#   run.sh short   128/128 (3,000)
# Logs and JSON into $OUT.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/bf16-kvfp8}; mkdir -p "$LOG"
. scripts/carried_wheels.sh; install_carried_wheels /tmp/site >/dev/null
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -5 /tmp/install.log; exit 1; }
export KILN_BENCH_KV=fp8
case "${1:-long}" in
  long) timeout 560 bash scripts/bench_gpu.sh 2048:2048:500:0:0 2048:128:1000:0:0 \
          > "$LOG/bench-long.log" 2>&1 ;;
  short) timeout 300 bash scripts/bench_gpu.sh 128:128:3000:0:0 > "$LOG/bench-short.log" 2>&1 ;;
esac
tail -n 40 "$LOG"/bench-*.log
cp build/bench/*.json "$LOG/" 2>/dev/null
