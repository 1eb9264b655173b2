#!/usr/bin/env bash
# One H200, one call: the int4 tensor-core kernel's GPU tests (wo_mma, wo_shapes: the scales
# after the MMAs and the SiLU-mul inside) and the quantized-engine tests beside FP8 + FP8 KV and
# INT4 AWQ engines built side by side; then gemm_sweep.py's int4 rows at M = 1 (the shipped
# configurations, rounded first and scales after) and each engine's speed check with a profile.
cd "$(dirname "$0")/../../.."
X=/tmp/x; mkdir -p $X
LOG=$X SPEED_TIMEOUT=60
. docs/results/fp8_ab.sh
kiln_install
t=$(date +%s)
shards_beside wo_mma wo_shapes quant_engines
INT4_TIMEOUT=380 build_fp8_int4
wait_tests
speed F1 /tmp/eF --profile --profile-batches 1
speed I1 /tmp/eI --profile --profile-batches 1
grep -E "wo_mma|wo_gemv|silu_mul|all kernels" $X/speed-I1.log | head -8
# The executor's own timings per GEMM (speed-I1.log) compare the configurations in one process;
# the sweep adds them per layer shape when time is left.
MMA=64:64:2:3:8,32:64:1:3:8,32:32:1:3:8:after,64:32:1:3:8:after,64:64:2:3:8:after,128:32:2:3:8:after
if [ $(( $(date +%s) - t )) -lt 480 ]; then
  timeout 60 python3 tests/gpu/gemm_sweep.py --skip-16bit --mma $MMA > $X/sweep.log 2>&1
  echo "sweep rc $? $(( $(date +%s) - t )) s"; grep "int4 mma" $X/sweep.log
fi
echo "done $(( $(date +%s) - t )) s"
tar -C $X -czf "$OUT/int4_scale_after.tgz" .
