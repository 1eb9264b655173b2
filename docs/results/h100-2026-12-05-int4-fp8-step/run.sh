#!/usr/bin/env bash
# One GPU, one call: FP8 + FP8 KV and INT4 AWQ Llama-3.1-8B-shaped engines built side by side
# from this tree (the int4 tensor-core kernel's configurations for up to 16 rows offered at 6,
# 4 and 2 programs an SM, the executor timing them in the step), while the quant_kernels and
# wo_paths GPU shards run; then each engine's speed check, I F I F, the first two with a
# per-kernel profile at batch 1 (the executor's per-GEMM timings in speed-I1.log).
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/x}; mkdir -p "$LOG"
SPEED_TIMEOUT=${SPEED_TIMEOUT:-75}
. docs/results/fp8_ab.sh
kiln_install
t=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
# TESTS=0: the engines and their speed only.
[ "${TESTS:-1}" = 0 ] || SHARD_TIMEOUT=330 shards_beside quant_kernels wo_paths
INT4_TIMEOUT=300 build_fp8_int4
wait_tests
echo "tests done $(( $(date +%s) - t )) s"
speed I1 /tmp/eI --profile --profile-batches 1
grep -E "wo_mma|wo_gemv|add_rmsnorm|silu_mul|all kernels" "$LOG/speed-I1.log" | head -8
speed F1 /tmp/eF --profile --profile-batches 1
# The second pair only where the device's ten minutes leave room for it.
[ $(( $(date +%s) - t )) -lt ${SECOND_PAIR_BEFORE:-420} ] && { speed I2 /tmp/eI; speed F2 /tmp/eF; }
echo "done $(( $(date +%s) - t )) s"
