#!/usr/bin/env bash
# The FP8 + FP8 KV 2048/2048 run's decode-only step by kernel: an engine of max batch 168, and
# tests/gpu/speed_check.py's profile of one step of 167 sequences at 3,072 tokens of context
# (serial launch), beside batch 1 and 167 at short context.
set -uo pipefail
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/fp8-long-decode-2026-12-05}
mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
t=$(date +%s)
engine-build --output /tmp/eL --random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 \
  --kv-cache-dtype fp8 --max-batch-size 168 --max-seq-len 4096 --target-sm 90 --calib-size 4 \
  --calib-seq-len 128 --quiet --overwrite >"$LOG/build.log" 2>&1
echo "build rc $? $(( $(date +%s) - t )) s"; tail -n 2 "$LOG/build.log"
timeout "${SPEED_TIMEOUT:-200}" python3 tests/gpu/speed_check.py --engine /tmp/eL --batches 1,167 \
  --profile --profile-batches 167 --profile-mixed 0:1:167:3072 >"$LOG/speed.log" 2>&1
echo "speed rc $?"
grep -A14 "by kernel" "$LOG/speed.log" | cut -c1-130
tail -n 12 "$LOG/speed.log"
