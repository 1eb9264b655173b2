#!/usr/bin/env bash
# One H200, one call, from a tree without the variant (2419ed2): FP8 + FP8 KV engines built side
# by side with the one-row kernel as it is (A) and with variant.diff applied (B: the prologue
# computed on contiguous x and split into the four strided vectors, plus a fifth FP8
# configuration); the one-row GPU tests and the FP8 engine tests on B's kernels beside the
# builds; then each engine timed twice (A B A B). The logs come back packed in ab.tgz.
cd "$(dirname "$0")/../../.."
D=docs/results/h200-2026-12-04-fp8-one-row-prologue HAS_VARIANT=0 LOG=/tmp/x SPEED_TIMEOUT=40
mkdir -p $LOG
. docs/results/fp8_ab.sh
beside_builds() {
  for d in dtype0 dtype1 dtype2; do
    timeout 230 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "(test_gemv_fp8 or test_gemv_glu and fp8) and $d" -q -p no:cacheprovider > "$LOG/tests-fp8-$d.log" 2>&1 &
    tests[fp8-$d]=$!
  done
  timeout 230 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "test_gemv and not test_gemv_fp8 and not test_gemv_glu" -q -p no:cacheprovider > "$LOG/tests-gemv16.log" 2>&1 &
  tests[gemv16]=$!
  timeout 230 python3 -m pytest -m gpu tests/gpu/test_quant_engines.py -q -p no:cacheprovider > "$LOG/tests-quant_engines.log" 2>&1 &
  tests[quant_engines]=$!
}
ab_main
tar -C $LOG -czf "$OUT/ab.tgz" .
