#!/usr/bin/env bash
# The first of two calls (its logs: h100-2026-12-06-first; the second: run.sh). Ran on commit
# 7055896 with a variant.diff of its csrc/ against 9b97a02: the cuBLASLt part of today's
# variant.diff and the capture of capture-behind.diff.
# One H100 call (~550 s): two changes to the host time around a step (B, this tree) against the
# tree without them (A: variant.diff reversed), on BF16 + FP8 KV 128/128 (3,000 requests):
#  - a new M above the timed range runs the cuBLASLt algorithm picked at a nearby M of the shape,
#    checked with cublasLtMatmulAlgoCheck, where A called the heuristic for every new M (each
#    step with prompt tokens spent 0.7-1.5 ms before its first launch: ../overlap-2026-12-06);
#  - a decode step of a launch shape without a graph runs launch by launch and its graph is
#    captured after its launches, while the GPU runs them, where A captured first (59 captures
#    over the run, 0.25 s of host time with the GPU idle).
# One engine, sized as bench_gpu.sh sizes it; runs B A B A, then the graph and runtime GPU tests
# on B. A is built as a wheel beside the build and installed for its runs; B's editable install
# back for its. Logs packed into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/step-host-2026-12-06
LOG=/tmp/step-host; mkdir -p "$LOG"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/logs.tgz" -C /tmp step-host; }
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
KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 200 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
  > "$LOG/build.log" 2>&1
at "build rc $?"
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
  grep -E "output tok/s|steps [0-9.]+ s:|host a step|executor|TTFT" "$LOG/run-$1.log" | cut -c1-160
}
E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
for n in B1 A1 B2; do bench $n "$E"; done
[ $(( $(date +%s) - t0 )) -lt "${A2_BEFORE:-420}" ] && bench A2 "$E"
use B
timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/gpu/test_graphs.py \
  tests/gpu/test_runtime_gpu.py -p no:cacheprovider > "$LOG/tests.log" 2>&1
at "tests rc $?"; tail -3 "$LOG/tests.log"
