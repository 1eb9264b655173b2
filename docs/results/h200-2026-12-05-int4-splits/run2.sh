#!/usr/bin/env bash
# One H200, one call: an INT4 AWQ Llama-3.1-8B-shaped engine of 4 layers built from this tree (the int4
# tensor-core kernel's configurations for up to 16 rows also offered at 4 and 2 programs an SM)
# and its batch-1 step timed with a profile (the executor's per-GEMM timings in speed-I1.log).
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/x}; mkdir -p "$LOG"
SPEED_TIMEOUT=60
. docs/results/fp8_ab.sh
kiln_install
t=$(date +%s)
timeout 330 engine-build --output /tmp/eI --random-weights llama-3.1-8b --random-layers 4 --dtype bfloat16 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite --quant int4_awq > "$LOG/build-int4.log" 2>&1
echo "build int4 rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-int4.log"
speed I1 /tmp/eI --profile --profile-batches 1
grep -E "wo_mma|all kernels" "$LOG/speed-I1.log" | head -3
sed -n '/at M=1,/,/at M=8,/p' "$LOG/speed-I1.log" | grep "kiln" | grep -E "layers\.(0|1)\." | cut -c1-160
echo "done $(( $(date +%s) - t )) s"
