#!/usr/bin/env bash
# One device call (~560 s; asked for whichever GPU came, it ran on an H200), each part cut short
# to leave the next its time:
# (1) cuBLASLt's candidates timed at large M (KILN_GEMM_TUNE_MAX_M and KILN_GEMM_CANDIDATES,
#     read by csrc/gpu/gemm.cpp with gemm-tune-variant.diff applied; not kept): the BF16
#     in-memory engine's GEMM choices at M = 1,500 and 2,048 (decode steps of the 128/128 run)
#     and 8,192 (its prompt step), each shape's timed best beside the heuristic's first;
# (2) BF16 weights with an FP8 KV cache (docs/results/bf16-kvfp8-2026-12-05), 2048/2048 on an
#     engine sized for it;
# (3) an FP8 + FP8 KV engine's decode step of 167 sequences at 3,072 tokens (the FP8 2048/2048
#     run's) by kernel, its GEMMs at 167 and 2,048 rows timed the same way.
# Logs and JSON into $OUT.
set -uo pipefail
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/h200-2026-12-06}; mkdir -p "$LOG"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
. scripts/carried_wheels.sh; install_carried_wheels /tmp/site >/dev/null
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -5 /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "installed at $(el) s"
export KILN_GEMM_CANDIDATES=16
KILN_GEMM_TUNE_MAX_M=16384 timeout 150 python3 tests/gpu/speed_check.py --batches 1500,2048 \
  --steps 32 --profile-mixed 50:128:1792:192 >"$LOG/gemm-bf16.log" 2>&1
echo "gemm-bf16 rc $? at $(el) s"
grep -A6 "cuBLASLt algorithms at M=[1-9][0-9][0-9]" "$LOG/gemm-bf16.log" | cut -c1-150
grep "ms/step" "$LOG/gemm-bf16.log"
KILN_BENCH_KV=fp8 OUT=/tmp/bench timeout 250 bash scripts/bench_gpu.sh 2048:2048:500:0:0 \
  > "$LOG/bench.log" 2>&1
echo "bench rc $? at $(el) s"
cp /tmp/bench/bench/*.json "$LOG/" 2>/dev/null
grep -v "Warn\|_warn_once" "$LOG/bench.log" | grep -A30 "engine-bench throughput\|output tok/s\|Throughput" | head -40
left=$(( 570 - $(el) ))
[ "$left" -gt 150 ] || exit 0
engine-build --output /tmp/eA --random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 \
  --kv-cache-dtype fp8 --max-batch-size 2048 --max-seq-len 4096 --target-sm 90 --calib-size 4 \
  --calib-seq-len 128 --quiet --overwrite >"$LOG/build-fp8.log" 2>&1
echo "build fp8 rc $? at $(el) s"; tail -2 "$LOG/build-fp8.log"
KILN_GEMM_TUNE_MAX_M=16384 timeout $(( 575 - $(el) )) python3 tests/gpu/speed_check.py \
  --engine /tmp/eA --batches 167,2048 --steps 32 --profile --profile-batches 167 \
  --profile-mixed 0:1:167:3072 >"$LOG/speed-fp8.log" 2>&1
echo "speed fp8 rc $? at $(el) s"
grep -A14 "by kernel" "$LOG/speed-fp8.log" | grep -v "Warn\|_warn_once" | cut -c1-110
grep -A6 "cuBLASLt algorithms at M=[1-9][0-9][0-9]" "$LOG/speed-fp8.log" | cut -c1-150
grep "ms/step" "$LOG/speed-fp8.log"
