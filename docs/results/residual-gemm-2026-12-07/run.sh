#!/usr/bin/env bash
# GPU calls on the tree of this branch (B; A: variant.diff reversed, built as a wheel beside).
#   STAGE=tests (~6 min): the GPU tests of the GEMMs that add a residual (test_kernels.py
#     -k residual), the engine-against-reference shards engines and quant_engines, and the
#     BF16 speed check (batch 1, TTFT).
#   STAGE=runs (~8 min): BF16 + FP8 KV 128/128 (3,000 requests) on the engine sized as
#     scripts/bench_gpu.sh sizes it, built by each tree (the pass runs at build time): B A B A.
# Logs in $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=docs/results/residual-gemm-2026-12-07
. docs/results/fp8_ab.sh
one_call "residual-gemm-${STAGE:-tests}"
if [ "${STAGE:-tests}" = tests ]; then
  timeout 200 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k residual -q -rs \
    -p no:cacheprovider > "$LOG/tests-kernels.log" 2>&1
  at "kernel tests rc $?: $(tail -n 1 "$LOG/tests-kernels.log")"
  timeout 120 python3 -m pytest -m gpu tests/gpu/test_tma_gemm.py -q -rs \
    -p no:cacheprovider > "$LOG/tests-tma.log" 2>&1
  at "tma gemm tests rc $?: $(tail -n 1 "$LOG/tests-tma.log")"
  for s in engines quant_engines; do
    timeout 220 python3 -m pytest -m gpu $(python3 tests/gpu/shards.py $s) -q -rs \
      -p no:cacheprovider > "$LOG/tests-$s.log" 2>&1
    at "$s rc $?: $(tail -n 1 "$LOG/tests-$s.log")"
  done
  timeout 120 python3 tests/gpu/speed_check.py --batches 1,8 --steps 64 > "$LOG/speed.log" 2>&1
  at "speed rc $?"; grep -E "graphs \(ms|roofline|first token" "$LOG/speed.log"
  exit 0
fi
wheel_a_beside
build() {  # NAME: the sized engine built by the tree installed now, moved to engines/NAME
  KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 200 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
    > "$LOG/build-$1.log" 2>&1
  at "build $1 rc $?: $(tail -n 1 "$LOG/build-$1.log")"
  rm -rf "engines/$1"; mv engines/llama-3.1-8b-bf16-kvfp8-sized "engines/$1"
}
build B
grep -c '"residual"' engines/B/*.json 2>/dev/null | head -3
wait $wheel; tail -n 1 "$LOG/wheel-a.log"
use A; build A
data=$PWD/data/128-128-3000.jsonl
for n in B1 A1 B2 A2; do
  [ $(( $(date +%s) - T0 )) -lt "${LAST_BEFORE:-540}" ] || break
  throughput $n "$PWD/engines/${n:0:1}" "$data"
done
at done
