#!/usr/bin/env bash
# One H100 call (~520 s): FP8 GEMMs with cuBLASLt's fast accumulation (B) against without (A,
# the default), `PlanExecutor.fp8_fast_accumulation`.
#   1. scaled_mm.py (~40 s): at the 8B shapes and 167 / 2,048 / 8,192 rows, each mode's error
#      against the float64 product of the same e4m3 operands (beside the e4m3 quantization's own
#      error) and its time, through torch._scaled_mm;
#   2. the GPU test of the switch (tests/gpu/test_quant_engines.py -k fast_accumulation), beside
#   3. the FP8 + FP8 KV engine sized for 128/128 (scripts/bench_gpu.sh, KILN_BENCH_BUILD_ONLY=1);
#   4. engine-bench throughput 128/128 on it, A then B, then A again where time is left;
#   5. where time is left, speed_check's decode of 2,048 sequences and the run's prompt step
#      by kernel, A then B.
# Logs and JSON into $OUT.
cd "$(dirname "$0")/../../.."
D=docs/results/fp8-fast-accum-2026-12-06
LOG=${OUT:-/tmp/fp8-fast-accum}; mkdir -p "$LOG"
t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 120 python3 $D/scaled_mm.py > "$LOG/scaled-mm.log" 2>&1
echo "scaled_mm rc $? at $(el) s"; cat "$LOG/scaled-mm.log"
timeout 300 python3 -m pytest -m gpu tests/gpu/test_quant_engines.py -k fast_accumulation -q -rs \
  -p no:cacheprovider > "$LOG/tests-fast-accumulation.log" 2>&1 &
tests=$!
# Its own name: the 2048/2048 calls' engine (engines/llama-3.1-8b-fp8-kvfp8-sized) stays as it is.
E=engines/llama-3.1-8b-fp8-kvfp8-128
KILN_BENCH_ENGINE=$E KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 220 \
  bash scripts/bench_gpu.sh 128:128:3000:0:0 > "$LOG/build.log" 2>&1
echo "build rc $? at $(el) s"; tail -3 "$LOG/build.log"
wait $tests; echo "tests rc $?: $(tail -n 1 "$LOG/tests-fast-accumulation.log")"
run() {
  timeout 100 python3 -m kiln.runtime.bench throughput --engine $E --dataset data/128-128-3000.jsonl \
    "${@:2}" --json "$LOG/throughput-$1.json" > "$LOG/throughput-$1.log" 2>&1
  echo "== $1 rc $? at $(el) s"
  grep -E "runtime|output tok/s|with prompt tokens|decode-only" "$LOG/throughput-$1.log"
}
run A
run B --fp8-fast-accumulation
[ "$(el)" -lt 420 ] && run A2
speed() {
  [ "$(el)" -lt 450 ] || return 0
  timeout 75 python3 tests/gpu/speed_check.py --engine $E --batches 2048 --steps 8 --profile \
    --profile-batches 2048 --profile-mixed 50:128:1792:192 "${@:2}" > "$LOG/speed-$1.log" 2>&1
  echo "== speed $1 rc $? at $(el) s"
  grep -E "all kernels|ms/step" "$LOG/speed-$1.log"
}
speed A
speed B --fp8-fast-accumulation
