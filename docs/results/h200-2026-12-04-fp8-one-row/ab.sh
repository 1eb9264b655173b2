#!/usr/bin/env bash
# One H200, one call: FP8 + FP8 KV engines built side by side with the one-row kernel of before
# (A: variant.diff reversed) and with e4m3 weights read as words of four values (B), the GLU and
# FP8 engine GPU tests on B's kernels beside the builds, then each engine timed twice (A B A B).
cd "$(dirname "$0")/../../.."
D=docs/results/h200-2026-12-04-fp8-one-row HAS_VARIANT=1 LOG=$OUT
. docs/results/fp8_ab.sh
beside_builds() {
  shards_beside gemv_glu quant_engines
}
ab_main
