#!/usr/bin/env bash
# One H100, one call: FP8 + FP8 KV engines built one after the other (80 GB) from the tree
# without (A: variant.diff reversed) and with (B) the add + RMSNorm quantization after the o-
# and down projections taken into their GEMM step (the one-row kernel's last program computing
# it: NORM_AFTER), the new kernel's GPU tests and the FP8 engine tests on B's tree beside the
# builds, then each engine timed (A B, with a per-kernel profile at batch 1, then A B again
# where the ten minutes leave room). Run with the variant applied (HAS_VARIANT=1, as on
# 2026-12-05) or on the tree as committed, which holds A (not kept: README.md).
cd "$(dirname "$0")/../../.."
D=docs/results/h100-2026-12-05-norm-after HAS_VARIANT=${HAS_VARIANT:-0} LOG=${OUT:-/tmp/x}
mkdir -p "$LOG"
SPEED_TIMEOUT=${SPEED_TIMEOUT:-75} SECOND_PAIR_BEFORE=${SECOND_PAIR_BEFORE:-420}
. docs/results/fp8_ab.sh
beside_builds() {
  timeout 330 python3 -m pytest -m gpu tests/gpu/test_quant_kernels.py -k test_gemv_norm_after \
    -q -rs -p no:cacheprovider > "$LOG/tests-norm_after.log" 2>&1 &
  tests[norm_after]=$!
  SHARD_TIMEOUT=330 shards_beside quant_engines
}
ab_main
