#!/usr/bin/env bash
# GPU calls on the tree with the residual add inside the GEMM (B; A: variant.diff reversed, built as a wheel beside).
#   STAGE=tests (~9 min): the GPU tests of the GEMMs that add a residual (test_kernels.py
#     -k residual) and test_tma_gemm.py beside scripts/gpu_check.sh with the shards SHARDS
#     (default: the engines against the reference, one of the tiny families' three shards and
#     the small-M GEMMs) and the speed check (BF16 batch 1, TTFT).
#   STAGE=runs (~8 min): BF16 + FP8 KV 128/128 (3,000 requests) on the engine sized as
#     scripts/bench_gpu.sh sizes it, built by each tree (the pass runs at build time): B A B A
#     (BESIDE=1: the residual's kernel tests and the engines shard while B is built).
# Logs in $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=docs/results/residual-gemm-2026-12-07
. docs/results/fp8_ab.sh
one_call "residual-gemm-${STAGE:-tests}"
if [ "${STAGE:-tests}" = tests ]; then
  # The engine shards (every tiny family's engine against the reference: families_*), the
  # small-M GEMMs without a residual, and the speed check; beside the shards (after the speed
  # check, which they would disturb) the GEMMs that add a residual and the TMA GEMMs (their choices).
  KILN_GPU_CHECK_SHARDS="${SHARDS:-engines quant_engines families_a small_m fp8_small_m}" \
    KILN_GPU_CHECK_LIMIT=${LIMIT:-470} bash scripts/gpu_check.sh > "$LOG/gpu-check.log" 2>&1 &
  check=$!
  while ! grep -q "^== pytest" "$LOG/gpu-check.log" 2>/dev/null && kill -0 $check; do sleep 2; done
  timeout 240 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k residual -q -rs \
    -p no:cacheprovider > "$LOG/tests-kernels.log" 2>&1
  timeout 100 python3 -m pytest -m gpu tests/gpu/test_tma_gemm.py -q -rs \
    -p no:cacheprovider > "$LOG/tests-tma.log" 2>&1
  at "kernel tests: $(tail -n 1 "$LOG/tests-kernels.log"); tma: $(tail -n 1 "$LOG/tests-tma.log")"
  wait $check
  at "gpu check rc $?"
  cp -r build/gpu-check "$LOG/"
  grep -E "^-- |passed|failed|graphs \(ms|roofline|first token" "$LOG/gpu-check.log" | tail -30
  exit 0
fi
wheel_a_beside
build() {  # NAME: the sized engine built by the tree installed now, moved to engines/NAME
  KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 200 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
    > "$LOG/build-$1.log" 2>&1
  at "build $1 rc $?: $(tail -n 1 "$LOG/build-$1.log")"
  rm -rf "engines/$1"; mv engines/llama-3.1-8b-bf16-kvfp8-sized "engines/$1"
}
# BESIDE=1: the residual's kernel tests and the engines shard run while B's engine and A's
# wheel are built (one call for both where the device's time is short); done before A is used.
if [ "${BESIDE:-0}" = 1 ]; then
  timeout 200 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k residual -q -rs \
    -p no:cacheprovider > "$LOG/tests-kernels.log" 2>&1 &
  k=$!
  timeout 200 python3 -m pytest -m gpu $(python3 tests/gpu/shards.py engines) -q -rs \
    -p no:cacheprovider > "$LOG/tests-engines.log" 2>&1 &
  e=$!
fi
build B
if [ "${BESIDE:-0}" = 1 ]; then
  wait $k; at "kernel tests rc $?: $(tail -n 1 "$LOG/tests-kernels.log")"
  wait $e; at "engines rc $?: $(tail -n 1 "$LOG/tests-engines.log")"
fi
wait $wheel; tail -n 1 "$LOG/wheel-a.log"
use A; build A
data=$PWD/data/128-128-3000.jsonl
for n in B1 A1 B2 A2; do
  [ $(( $(date +%s) - T0 )) -lt "${LAST_BEFORE:-540}" ] || break
  throughput $n "$PWD/engines/${n:0:1}" "$data"
done
at done
