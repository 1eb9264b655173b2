#!/usr/bin/env bash
# The second call (on another H100 start): the sized engine built again, T F K T F K (as run.sh
# names them) while under RUNS_BEFORE seconds (default 330), the GPU test of kernels_from_rows,
# then GPU test shards (SHARDS) with the call's remaining time (their logs in the same tgz).
cd "$(dirname "$0")/../../.."
. docs/results/fp8_ab.sh
one_call kernels-from-2
. docs/results/kernels-from-2026-12-07/common.sh
for v in T3:0 F3:2048 K3:4096 T4:0 F4:2048 K4:4096; do
  [ $(( $(date +%s) - T0 )) -lt "${RUNS_BEFORE:-330}" ] || break
  run "${v%%:*}" "${v#*:}"
done
rm -rf engines  # the shards' engines need the disk and the memory
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_tma_gemm.py \
  -k kernels_from_rows > "$LOG/tests-kernels-from.log" 2>&1
at "kernels_from_rows test rc $?: $(tail -n 1 "$LOG/tests-kernels-from.log")"
left=$(( ${CALL_S:-585} - ($(date +%s) - T0) ))
at "shards for ${left} s: ${SHARDS:-attention_a attention_b fp8_small_m quant_kernels}"
for s in ${SHARDS:-attention_a attention_b fp8_small_m quant_kernels}; do
  timeout "$left" python3 -m pytest -m gpu $(python3 tests/gpu/shards.py $s) -q -rs \
    -p no:cacheprovider > "$LOG/tests-$s.log" 2>&1 &
done
wait
for s in ${SHARDS:-attention_a attention_b fp8_small_m quant_kernels}; do
  echo "tests $s: $(tail -n 1 "$LOG/tests-$s.log")"; grep -E "^(FAILED|ERROR)" "$LOG/tests-$s.log" | head -5
done
at done
