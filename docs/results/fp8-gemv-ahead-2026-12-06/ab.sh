#!/usr/bin/env bash
# One H100, one call (~450 s): FP8 + FP8 KV engines built one after the other from the tree (A)
# and with variant.diff (B: the one-row FP8 GEMM also offered with its weight read two tiles
# ahead, configurations (8, 512, 4, 2), (8, 1024, 4, 2) and (16, 1024, 8, 2); the executor
# times them beside the others), the one-row FP8 kernels' GPU tests on B's tree beside the builds, then each engine
# timed (A B, with a per-kernel profile at batch 1, then A B again where the ten minutes leave
# room). Run on the tree as committed, which holds A.
cd "$(dirname "$0")/../../.."
D=docs/results/fp8-gemv-ahead-2026-12-06 HAS_VARIANT=${HAS_VARIANT:-0} LOG=${OUT:-/tmp/x}
mkdir -p "$LOG"
SPEED_TIMEOUT=${SPEED_TIMEOUT:-75} SECOND_PAIR_BEFORE=${SECOND_PAIR_BEFORE:-420}
. docs/results/fp8_ab.sh
beside_builds() {
  timeout 330 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "gemv_fp8 or (gemv_glu and fp8)" \
    -q -rs -p no:cacheprovider > "$LOG/tests-gemv_fp8.log" 2>&1 &
  tests[gemv_fp8]=$!
}
ab_main
