#!/usr/bin/env bash
# One H200, one device call (logs written into $OUT as they come), from the repository root with
# variant.diff applied to 69ce239 (as committed in a3efdeb, before the two changes to the loop
# the diff also holds): FP8 + FP8 KV and INT4 AWQ
# Llama-3.1-8B-shaped engines built side by side from this tree while the wo_shapes and
# quant_engines GPU shards run (the int4 tensor-core kernel with the RMSNorm inside among
# them), then each engine's speed check with a per-kernel profile at batch 1 (I then F).
# `run.sh again`: the two speed checks again (F then I) on the engines a warm machine kept.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/x}; mkdir -p "$LOG"
SPEED_TIMEOUT=70
. docs/results/fp8_ab.sh
kiln_install
t=$(date +%s)
if [ "${1:-}" = again ]; then
  speed F2 /tmp/eF; speed I2 /tmp/eI
  echo "done $(( $(date +%s) - t )) s"; exit 0
fi
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
shards_beside wo_shapes quant_engines
INT4_TIMEOUT=330 build_fp8_int4
wait_tests
echo "tests done $(( $(date +%s) - t )) s"
speed I1 /tmp/eI --profile --profile-batches 1
grep -E "wo_mma|add_rmsnorm|silu_mul|all kernels" "$LOG/speed-I1.log" | head -6
speed F1 /tmp/eF --profile --profile-batches 1
echo "done $(( $(date +%s) - t )) s"
