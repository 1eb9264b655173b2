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
LOG=/tmp/overlap; mkdir -p "$LOG"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/logs.tgz" -C /tmp overlap; }
trap pack EXIT
t0=$(date +%s)
at() { echo "$1 at $(( $(date +%s) - t0 )) s"; }
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
at installed
mkdir -p /tmp/a && tar cf - --exclude=./.git --exclude=./build --exclude=./.whl --exclude=./engines --exclude=./data . \
  | tar xf - -C /tmp/a && (cd /tmp/a && patch -s -R -p1 < "$D/variant.diff") || exit 1
(python3 -m pip wheel --no-build-isolation --no-deps /tmp/a -w /tmp/a-wheel > "$LOG/wheel-a.log" 2>&1;
 echo "wheel A rc $?" >> "$LOG/wheel-a.log") &
wheel=$!
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
use() {  # use A|B
  if [ "$1" = A ]; then python3 -m pip install -q --no-deps --force-reinstall /tmp/a-wheel/*.whl > "$LOG/use.log" 2>&1
  else python3 -m pip install -q --no-build-isolation --no-deps -e . > "$LOG/use.log" 2>&1; fi || { tail "$LOG/use.log"; exit 1; }
}
bench() {  # bench NAME ENGINE
  use "${1:0:1}"
  timeout 100 python3 -m kiln.runtime.bench throughput --engine "$2" --dataset "$PWD/data/128-128-3000.jsonl" \
    --json "$LOG/run-$1.json" > "$LOG/run-$1.log" 2>&1
  at "$1 rc $?"
  grep -E "output tok/s|steps [0-9.]+ s:|host a step" "$LOG/run-$1.log" | cut -c1-160
}
E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
for n in B1 A1 B2; do bench $n "$E"; done
[ $(( $(date +%s) - t0 )) -lt "${A2_BEFORE:-270}" ] && bench A2 "$E"
if [ $(( $(date +%s) - t0 )) -lt "${FP8_BEFORE:-330}" ]; then
  use B
  KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 170 bash scripts/bench_gpu.sh \
    128:128:3000:0:0 > "$LOG/build-fp8.log" 2>&1
  at "fp8 build rc $?"
  for n in B3 A3; do bench $n "$PWD/engines/llama-3.1-8b-fp8-kvfp8-sized"; done
fi
