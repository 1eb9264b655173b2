#!/usr/bin/env bash
# One device call: FP8 + FP8 KV Llama-3.1-8B-shaped engines built without (A) and with (B)
# --l2-prefetch-mb 24, GPU test shards ($SHARDS) beside the builds, then each engine's decode
# timed twice (A B A B), batch 1 with a per-kernel profile first.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/x}; mkdir -p "$LOG"
MB=${MB:-24}
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
t=$(date +%s)
engine-build --output /tmp/eA $FP8_ARGS > "$LOG/build-A.log" 2>&1 &
pa=$!
engine-build --output /tmp/eB $FP8_ARGS --l2-prefetch-mb $MB > "$LOG/build-B.log" 2>&1 &
pb=$!
for s in ${SHARDS:-}; do
  read -r -a args <<<"$(python3 tests/gpu/shards.py "$s")"
  timeout ${TESTS_TIMEOUT:-330} python3 -m pytest -q -m gpu -p no:cacheprovider "${args[@]}" > "$LOG/tests-$s.log" 2>&1 &
  tests[$s]=$!
done
wait $pa; echo "build A rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-A.log"
wait $pb; echo "build B rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-B.log"
for s in "${!tests[@]}"; do wait ${tests[$s]}; echo "tests $s rc $?: $(tail -n 1 "$LOG/tests-$s.log")"; done
echo "tests done $(( $(date +%s) - t )) s"
SPEED_TIMEOUT=70
speed() {
  local name=$1 e=$2; shift 2
  local t0=$(date +%s)
  timeout $SPEED_TIMEOUT python3 tests/gpu/speed_check.py --engine $e --batches 1,8 --steps 128 "$@" > "$LOG/speed-$name.log" 2>&1
  echo "== $name rc $? ($(( $(date +%s) - t0 )) s)"; grep -E "roofline|graphs \(ms|all kernels|paged_decode_kernel|gemv|small_m" "$LOG/speed-$name.log" | grep -v "^ *N=" | head -12
}
speed A1 /tmp/eA --profile --profile-batches 1
speed B1 /tmp/eB --profile --profile-batches 1
speed A2 /tmp/eA
speed B2 /tmp/eB
echo "done $(( $(date +%s) - t )) s"
