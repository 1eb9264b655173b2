#!/usr/bin/env bash
# One H200, one call: the kernel shards of the GPU check on the tree as committed, beside FP8 +
# FP8 KV and INT4 AWQ engines built from it; then each engine timed twice (FP8 INT4 FP8 INT4).
cd "$(dirname "$0")/../../.."
X=/tmp/x; mkdir -p $X
LOG=$X SPEED_TIMEOUT=60
. docs/results/fp8_ab.sh
t=$(date +%s)
(OUT=$X/check KILN_GPU_CHECK_SPEED=0 KILN_GPU_CHECK_SHARDS="small_m kernels gemv_glu small_m_glu fp8_small_m quant_kernels wo_paths wo_mma wo_shapes" bash scripts/gpu_check.sh > $X/check.log 2>&1) &
pc=$!
while ! grep -q '== pytest' $X/check.log 2>/dev/null && kill -0 $pc 2>/dev/null; do sleep 2; done
echo "check installed $(( $(date +%s) - t )) s"
export PYTHONPATH=/tmp/kiln-wheels
build_fp8_int4
wait $pc; echo "check rc $? $(( $(date +%s) - t )) s"
grep -E '^-- |passed|failed' $X/check.log | grep -E '^-- |[0-9]+ (passed|failed)'
speed F1 /tmp/eF --profile --profile-batches 1
speed I1 /tmp/eI --profile --profile-batches 1
speed F2 /tmp/eF
speed I2 /tmp/eI
echo "done $(( $(date +%s) - t )) s"
tar -C $X -czf "$OUT/check_and_int4.tgz" .
