#!/usr/bin/env bash
# Engine level: 2048/128 (1,000 requests) on the BF16 engine sized for it, built from the tree
# with variant.diff (B, as the tree holds it) and without (A: the diff reversed in place), B A,
# then B A again on the same engines while the call has the time (SECOND_ROUND_BEFORE seconds,
# default 330). SHARDS="attention_a attention_b": those GPU test shards (tests/gpu/shards.py) run
# on B's kernels beside B's build, and are waited for (SHARD_TIMEOUT seconds, default 240)
# before the first run. One log a run (and a shard) in $OUT, the JSON reports in json.tar.
set -uo pipefail
cd "$(dirname "$0")/../../.."
D=docs/results/attention-unmasked-2026-12-05
LOG=${OUT:-/tmp/attention-unmasked-engine}; mkdir -p "$LOG"
grep -q "def _attend_tile" builder/kernels/attention.py || { echo "the tree does not hold B"; exit 1; }
. docs/results/fp8_ab.sh
t0=$(date +%s)
kiln_install
echo "installed in $(( $(date +%s) - t0 )) s"
bench() {  # tree round
  local out=/tmp/bench-$1-$2
  rm -rf "$out"; mkdir -p "$out"
  OUT=$out KILN_BENCH_ENGINE=/tmp/engine-$1 timeout 260 bash scripts/bench_gpu.sh 2048:128:1000:0:0 \
    > "$LOG/bench-$1-$2.log" 2>&1
  echo "== $1 $2 rc $? at $(( $(date +%s) - t0 )) s: $(grep -h 'output tok/s' "$LOG/bench-$1-$2.log" | head -1)"
  grep -h "engine build wall\|steps .* s:\|with prompt\|decode-only\|floor" "$LOG/bench-$1-$2.log" | cut -c1-200
  cp "$out/bench/throughput-2048-128.json" "/tmp/json/throughput-2048-128-$1-$2.json" 2>/dev/null
}
mkdir -p /tmp/json
if [ -n "${SHARDS:-}" ]; then
  SHARD_TIMEOUT=${SHARD_TIMEOUT:-240} shards_beside $SHARDS
  # B's engine built beside the tests
  OUT=/tmp/bench-B-build KILN_BENCH_ENGINE=/tmp/engine-B KILN_BENCH_BUILD_ONLY=1 timeout 200 \
    bash scripts/bench_gpu.sh 2048:128:1000:0:0 >"$LOG/build-B.log" 2>&1 &
  pb=$!
  wait_tests
  wait $pb; echo "B's build rc $?: $(tail -n 1 "$LOG/build-B.log")"
  echo "B built and tests done at $(( $(date +%s) - t0 )) s"
fi
bench B 1
patch -R -p1 <"$D/variant.diff" >/dev/null || { echo "A not made"; exit 1; }
grep -q "def _attend_tile" builder/kernels/attention.py && { echo "A still holds B"; exit 1; }
bench A 1
if [ $(( $(date +%s) - t0 )) -lt "${SECOND_ROUND_BEFORE:-330}" ]; then
  bench B 2  # the engines carry their compiled kernels: the source's state does not matter now
  bench A 2
fi
tar -C /tmp/json -cf "$LOG/json.tar" .
