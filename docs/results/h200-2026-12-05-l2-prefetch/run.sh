#!/usr/bin/env bash
# One device call: Llama-3.1-8B-shaped engines built side by side, one per VARIANTS entry
# QUANT:MB (fp8: FP8 + FP8 KV; bf16: plain bfloat16; MB: --l2-prefetch-mb), GPU test shards
# ($SHARDS, and EXTRA_TESTS: pytest arguments of more processes, ';' apart) beside the builds, then each engine's decode
# timed at batch 1 twice in turn, then at batch 1 and 8 with a batch-1 per-kernel profile.
cd "$(dirname "$0")/../../.."
LOG=${LOG:-/tmp/l2pf}; mkdir -p "$LOG"  # the caller packs it into $OUT
VARIANTS=${VARIANTS:-"fp8:0 fp8:24"}
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
t=$(date +%s)
BF16_ARGS="--random-weights llama-3.1-8b --dtype bfloat16 --max-batch-size 64 --target-sm 90 --quiet --overwrite"
declare -A builds
name() { echo "${1//:/-}"; }
for v in $VARIANTS; do
  IFS=: read -r quant mb <<<"$v"
  args=$FP8_ARGS; [ "$quant" = bf16 ] && args=$BF16_ARGS
  engine-build --output /tmp/e-$(name $v) $args --l2-prefetch-mb $mb > "$LOG/build-$(name $v).log" 2>&1 &
  builds[$v]=$!
done
for s in ${SHARDS:-}; do
  read -r -a args <<<"$(python3 tests/gpu/shards.py "$s")"
  timeout ${TESTS_TIMEOUT:-330} python3 -m pytest -q -m gpu -p no:cacheprovider "${args[@]}" > "$LOG/tests-$s.log" 2>&1 &
  tests[$s]=$!
done
IFS=';' read -r -a extra <<<"${EXTRA_TESTS:-}"  # pytest arguments of more processes, ';' apart
for i in "${!extra[@]}"; do
  eval "args=(${extra[$i]})"
  timeout ${TESTS_TIMEOUT:-330} python3 -m pytest -q -m gpu -p no:cacheprovider "${args[@]}" > "$LOG/tests-extra$i.log" 2>&1 &
  tests[extra$i]=$!
done
for v in $VARIANTS; do
  wait ${builds[$v]}; echo "build $v rc $? $(( $(date +%s) - t )) s: $(tail -n 1 "$LOG/build-$(name $v).log")"
done
for s in "${!tests[@]}"; do wait ${tests[$s]}; echo "tests $s rc $?: $(tail -n 1 "$LOG/tests-$s.log")"; done
echo "tests done $(( $(date +%s) - t )) s"
SPEED_TIMEOUT=${SPEED_TIMEOUT:-70}
speed() {
  local name=$1 e=$2; shift 2
  local t0=$(date +%s)
  timeout $SPEED_TIMEOUT python3 tests/gpu/speed_check.py --engine $e --batches 1,8 --steps 128 "$@" > "$LOG/speed-$name.log" 2>&1
  echo "== $name rc $? ($(( $(date +%s) - t0 )) s)"
  grep -E "roofline|graphs \(ms|all kernels|paged_decode_kernel|gemv_kernel|small_m_gemm_kernel" "$LOG/speed-$name.log" | grep -v "^ *N=" | head -12
}
for r in 1 2; do
  for v in $VARIANTS; do speed "$(name $v)-$r" /tmp/e-$(name $v) --batches 1; done
done
for v in $VARIANTS; do speed "$(name $v)-p" /tmp/e-$(name $v) --profile --profile-batches 1; done
echo "done $(( $(date +%s) - t )) s"
