#!/usr/bin/env bash
# One H100 call (~580 s): a step's responses published while the backend runs the next one (B,
# this tree) against publishing them after the step (A: this tree with variant.diff reversed),
# on BF16 + FP8 KV 128/128 (3,000 requests; 18,788.7 output tok/s on 2026-12-06, where each
# decode-only step of ~3,000 sequences left the GPU idle ~3.1 ms between steps:
# ../host-gaps-2026-12-06). One engine, sized as bench_gpu.sh sizes it; runs B A B A, then, with
# time left, FP8 + FP8 KV 128/128 B A. tests/gpu/test_runtime_gpu.py on B beside the build. A is
# built as a wheel beside the build and installed for its runs; B's editable install back for
# its. Logs packed into $OUT/logs.tgz. Ran first with the GPU tests beside the build, which
# took the memory its calibration needed (the BF16 build failed; FP8 ran): now after it.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/overlap-2026-12-06
. docs/results/fp8_ab.sh
one_call overlap
wheel_a_beside
# GPU tests beside the build (RUN_TESTS=1) hold the memory the build's calibration needs: on an
# 80 GB card they run after it.
KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 200 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
  > "$LOG/build.log" 2>&1
at "build rc $?"
if [ "${RUN_TESTS:-0}" = 1 ]; then
  timeout 200 python3 -m pytest -q -m gpu tests/gpu/test_runtime_gpu.py -p no:cacheprovider \
    > "$LOG/tests-runtime.log" 2>&1
  at "tests rc $?"; tail -1 "$LOG/tests-runtime.log"
fi
wait $wheel; tail -1 "$LOG/wheel-a.log"
bench() { throughput "$1" "$2" "$PWD/data/128-128-3000.jsonl"; }  # bench NAME ENGINE
E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
for n in B1 A1 B2; do bench $n "$E"; done
[ $(( $(date +%s) - T0 )) -lt "${A2_BEFORE:-270}" ] && bench A2 "$E"
if [ $(( $(date +%s) - T0 )) -lt "${FP8_BEFORE:-330}" ]; then
  use B
  KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 170 bash scripts/bench_gpu.sh \
    128:128:3000:0:0 > "$LOG/build-fp8.log" 2>&1
  at "fp8 build rc $?"
  for n in B3 A3; do bench $n "$PWD/engines/llama-3.1-8b-fp8-kvfp8-sized"; done
fi
