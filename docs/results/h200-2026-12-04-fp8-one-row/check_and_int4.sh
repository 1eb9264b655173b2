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
COMMON="--random-weights llama-3.1-8b --dtype bfloat16 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite"
engine-build --output /tmp/eF $COMMON --quant fp8 --kv-cache-dtype fp8 > $X/build-fp8.log 2>&1 &
pf=$!
timeout 330 engine-build --output /tmp/eI $COMMON --quant int4_awq > $X/build-int4.log 2>&1 &
pi=$!
wait $pf; echo "build fp8 rc $? $(( $(date +%s) - t )) s"; tail -n 1 $X/build-fp8.log
wait $pi; echo "build int4 rc $? $(( $(date +%s) - t )) s"; tail -n 1 $X/build-int4.log
wait $pc; echo "check rc $? $(( $(date +%s) - t )) s"
grep -E '^-- |passed|failed' $X/check.log | grep -E '^-- |[0-9]+ (passed|failed)'
speed F1 /tmp/eF --profile --profile-batches 1
speed I1 /tmp/eI --profile --profile-batches 1
speed F2 /tmp/eF
speed I2 /tmp/eI
echo "done $(( $(date +%s) - t )) s"
tar -C $X -czf "$OUT/check_and_int4.tgz" .
