#!/usr/bin/env bash
# One H200, one call: FP8 + FP8 KV engines built side by side with the small-M GEMM of before
# (A: variant.diff reversed) and with its first weight tile read before the PDL wait (B), the
# small-M GPU tests on B's kernels beside the builds, then each engine timed twice (A B A B).
cd "$(dirname "$0")/../../.."
D=docs/results/h200-2026-12-04-small-m-early-tile HAS_VARIANT=1 LOG=$OUT
. docs/results/fp8_ab.sh
beside_builds() {
  shards_beside small_m small_m_glu fp8_small_m
}
ab_main
