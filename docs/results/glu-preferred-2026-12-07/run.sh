#!/usr/bin/env bash
# One GPU call (~9 min on an H100): the tree installed while residual-prefetch-2026-12-07's
# kernel measurements run (nothing of them built), then the GPU tests of the GLU kernel's
# preference (tests/gpu/test_tma_gemm.py), then BF16 + FP8 KV 128/128 (3,000 requests, the
# sized engine of scripts/bench_gpu.sh) with the engine's preference (P: the default) against
# every choice timed at load (T: --kernels-from-rows 0), P T P T as the call's time allows.
# RUNS=0 stops after the tests. Logs in $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
. docs/results/fp8_ab.sh
LOG=/tmp/glu-preferred; mkdir -p "$LOG"
trap "[ -n \"\${OUT:-}\" ] && tar czf \"\$OUT/logs.tgz\" -C /tmp glu-preferred" EXIT
T0=$(date +%s)
at() { echo "$1 at $(( $(date +%s) - T0 )) s"; }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
# The carried wheels' path is set in this shell; the editable install runs beside.
. scripts/carried_wheels.sh; install_carried_wheels /tmp/site > /dev/null
python3 -m pip install --no-build-isolation --no-deps -e . > "$LOG/install.log" 2>&1 &
install=$!
OUT=$LOG LIMIT=${MICRO_LIMIT:-170} bash docs/results/residual-prefetch-2026-12-07/run.sh > "$LOG/micro.log" 2>&1
at "kernel measurements rc $?"; grep -v "Warning\|warn" "$LOG/micro.log" | tail -30
wait $install; at "installed rc $?"
timeout 200 python3 -m pytest -m gpu tests/gpu/test_tma_gemm.py -q -rs -p no:cacheprovider \
  > "$LOG/tests-tma.log" 2>&1
at "tests rc $?: $(tail -n 1 "$LOG/tests-tma.log")"
[ "${RUNS:-1}" = 1 ] || exit 0
KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 240 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
  > "$LOG/build.log" 2>&1
at "build rc $?: $(tail -n 1 "$LOG/build.log")"
E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
data=$PWD/data/128-128-3000.jsonl
for pass in 1 2; do
  for v in P: T:0; do
    [ $(( $(date +%s) - T0 )) -lt "${LAST_BEFORE:-500}" ] || break 2
    name=${v%%:*}$pass rows=${v#*:}
    timeout 100 python3 -m kiln.runtime.bench throughput --engine "$E" --dataset "$data" \
      ${rows:+--kernels-from-rows $rows} --json "$LOG/run-$name.json" > "$LOG/run-$name.log" 2>&1
    at "$name (kernels from ${rows:-the engine marks}) rc $?"
    grep -E "output tok/s|steps [0-9.]+ s:|TTFT|runtime" "$LOG/run-$name.log" | cut -c1-160
  done
done
grep -h "preferred" "$LOG"/run-P1.log 2>/dev/null | head -3
at done
