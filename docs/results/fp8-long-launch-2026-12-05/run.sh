#!/usr/bin/env bash
# Ran on 2026-12-06 (h100-2026-12-06/, README.md); B is merged since, so variant.diff no longer
# applies to the tree.
# FP8 + FP8 KV engines (max batch 2,048) built from the tree (A: long unsplit decode steps
# launch 64 keys x 2 warps x 3 stages) and with variant.diff (B: 32 x 1 x 2, the short unsplit
# steps' launch), then each one's decode step of 167 sequences at 3,072 tokens (the 2048/2048
# run's) by kernel (tests/gpu/speed_check.py --profile-mixed, serial launch), beside batches 1,
# 167 and 2,048 at short context (2,048: a 128/128 run's decode step, also by kernel); A B,
# then A again while the call has the time, with cuBLASLt's candidates timed up to 256 rows
# (docs/results/h200-2026-12-06/gemm-tune-variant.diff, compiled in; its knobs unset elsewhere,
# which leaves the executor as in the tree): at 167 rows the FP8 GEMMs read their weights at
# 36-66% of the bandwidth on the heuristic's first pick.
set -uo pipefail
cd "$(dirname "$0")/../../.."
D=docs/results/fp8-long-launch-2026-12-05
LOG=${OUT:-/tmp/fp8-long-launch}; mkdir -p "$LOG"
grep -q "    if long and split:" builder/kernels/attention.py && { echo "the tree holds B"; exit 1; }
. docs/results/fp8_ab.sh
t0=$(date +%s)
patch -s -p1 <docs/results/h200-2026-12-06/gemm-tune-variant.diff || { echo "knobs not applied"; exit 1; }
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
ARGS="--random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 --kv-cache-dtype fp8 \
  --max-batch-size 2048 --max-seq-len 4096 --target-sm 90 --calib-size 4 --calib-seq-len 128 \
  --quiet --overwrite"
build() {
  engine-build --output /tmp/e$1 $ARGS >"$LOG/build-$1.log" 2>&1
  echo "build $1 rc $? at $(( $(date +%s) - t0 )) s"
}
profile() {  # tree round [environment]
  env ${3:-} timeout 170 python3 tests/gpu/speed_check.py --engine /tmp/e$1 --batches 1,167,2048 --steps 128 --profile \
    --profile-batches 167,2048 --profile-mixed 0:1:167:3072 >"$LOG/speed-$1-$2.log" 2>&1
  echo "== $1 $2 rc $? at $(( $(date +%s) - t0 )) s"
  grep -A10 "by kernel" "$LOG/speed-$1-$2.log" | grep -v "Warn\|_warn_once" | cut -c1-110
}
build A
patch -s -p1 <"$D/variant.diff" || { echo "B not made"; exit 1; }
build B
profile A 1
profile B 1
[ $(( $(date +%s) - t0 )) -lt "${SECOND_BEFORE:-480}" ] && \
  profile A tuned "KILN_GEMM_TUNE_MAX_M=256 KILN_GEMM_CANDIDATES=16"
for f in "$LOG"/speed-A-*.log; do echo "$f"; grep -A7 "algorithms at M=167" "$f" | cut -c1-120; done
tail -n 12 "$LOG/speed-B-1.log"
