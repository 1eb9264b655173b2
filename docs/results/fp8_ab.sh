# Shared by the one-call A/B scripts in docs/results (sourced, not run): FP8 + FP8 KV
# Llama-3.1-8B-shaped engines built side by side (one after the other on a card under 120 GB)
# from the tree without (A) and with (B) a variant.diff, GPU tests on B's kernels beside the
# builds, then each engine timed twice (A B A B; the second pair only before
# SECOND_PAIR_BEFORE seconds where set). From the repository root, a script sets
#   D            its folder, which holds variant.diff
#   HAS_VARIANT  1: the tree holds B (A is the diff reversed); 0: it holds A
#   LOG          where the logs go ($OUT, or a folder it then packs into $OUT)
# and defines `beside_builds`, which starts its tests in the background, each pid in the
# associative array `tests` under the name of its log (LOG/tests-NAME.log; `shards_beside`
# does so for GPU shards); then calls ab_main. `speed NAME ENGINE [ARGS]` (one speed check, its
# headline figures echoed), `build_fp8_int4`, `shards_beside` and `wait_tests` serve alone too.
# For runtime changes timed on one engine with the A tree installed as a wheel: `one_call NAME`
# (logs in /tmp/NAME, packed into $OUT/logs.tgz at exit; the install), `wheel_a_beside` (D set;
# the tree holds B; VARIANT: B's diff where not D/variant.diff), `use A|B`,
# `throughput NAME ENGINE DATASET` and `kvfp8_128_abab`.

FP8_ARGS="--random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 --kv-cache-dtype fp8 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite"
SPEED_TIMEOUT=${SPEED_TIMEOUT:-110}
declare -A tests

kiln_install() {
  . scripts/carried_wheels.sh; install_carried_wheels /tmp/site >/dev/null
  python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -30 /tmp/install.log; exit 1; }
}

# FP8 + FP8 KV (/tmp/eF) and INT4 AWQ (/tmp/eI) engines built side by side from the tree as it
# is, their logs in LOG; the INT4 build cut at INT4_TIMEOUT seconds (default 330).
build_fp8_int4() {
  local common="--random-weights llama-3.1-8b --dtype bfloat16 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite"
  local t=$(date +%s)
  engine-build --output /tmp/eF $common --quant fp8 --kv-cache-dtype fp8 > "$LOG/build-fp8.log" 2>&1 &
  local pf=$!
  # Each build's calibration holds ~38 GiB of the GPU: on an 80 GB card they go one at a time.
  local mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  local rf=""
  [ "$mib" -lt 120000 ] && { wait $pf; rf=$?; }
  timeout ${INT4_TIMEOUT:-330} engine-build --output /tmp/eI $common --quant int4_awq > "$LOG/build-int4.log" 2>&1 &
  local pi=$!
  [ -n "$rf" ] || { wait $pf; rf=$?; }
  echo "build fp8 rc $rf $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-fp8.log"
  wait $pi; echo "build int4 rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-int4.log"
}

# GPU shards (tests/gpu/shards.py names) started in the background, each into
# LOG/tests-NAME.log and the array `tests`; SHARD_TIMEOUT seconds each where set.
shards_beside() {
  local s
  for s in "$@"; do
    ${SHARD_TIMEOUT:+timeout $SHARD_TIMEOUT} python3 -m pytest -m gpu \
      $(python3 tests/gpu/shards.py $s) -q -rs -p no:cacheprovider > "$LOG/tests-$s.log" 2>&1 &
    tests[$s]=$!
  done
}

# Waits for every test process in `tests`, each one's exit code and last line echoed.
wait_tests() {
  local s
  for s in "${!tests[@]}"; do
    wait ${tests[$s]}; echo "tests $s rc $?: $(tail -n 1 "$LOG/tests-$s.log")"
  done
}

speed() {
  local name=$1 e=$2; shift 2
  local t0=$(date +%s)
  timeout $SPEED_TIMEOUT python3 tests/gpu/speed_check.py --engine $e --batches 1,8,64 --steps 128 "$@" > "$LOG/speed-$name.log" 2>&1
  echo "== $name rc $? ($(( $(date +%s) - t0 )) s)"; grep -E "copy|graphs|roofline" "$LOG/speed-$name.log" | grep -E "TB/s|ms/step|roofline" | tail -9
}

ab_main() {
  kiln_install
  nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
  local t=$(date +%s)
  [ "$HAS_VARIANT" = 1 ] && { patch -s -R -p1 < $D/variant.diff || exit 1; }
  # A imports the kernels (their source is read then) and the passes before B's are put in place.
  python3 -c "import sys, pathlib, kiln.builder.build, kiln.builder.passes, kiln.builder.kernels.lower
import kiln.builder.kernels.gemm, kiln.builder.kernels.pdl, kiln.builder.kernels.quant
pathlib.Path('/tmp/A.imported').touch()
from kiln.builder.cli import build_main
sys.exit(build_main())" --output /tmp/eA $FP8_ARGS > "$LOG/build-A.log" 2>&1 &
  local pa=$!
  while [ ! -e /tmp/A.imported ] && kill -0 $pa 2>/dev/null; do sleep 1; done
  patch -s -p1 < $D/variant.diff || exit 1
  beside_builds
  # Each build's calibration holds ~38 GiB of the GPU: on an 80 GB card they go one at a time.
  local mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  local ra=""
  [ "$mib" -lt 120000 ] && { wait $pa; ra=$?; }
  engine-build --output /tmp/eB $FP8_ARGS > "$LOG/build-B.log" 2>&1 &
  local pb=$!
  [ -n "$ra" ] || { wait $pa; ra=$?; }
  echo "build A rc $ra $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-A.log"
  wait $pb; echo "build B rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$LOG/build-B.log"
  wait_tests
  echo "tests done $(( $(date +%s) - t )) s"
  speed A1 /tmp/eA --profile --profile-batches 1
  speed B1 /tmp/eB --profile --profile-batches 1
  # The second pair only where the device's ten minutes leave room for it.
  [ $(( $(date +%s) - t )) -lt ${SECOND_PAIR_BEFORE:-100000} ] && { speed A2 /tmp/eA; speed B2 /tmp/eB; }
  echo "done $(( $(date +%s) - t )) s"
}

# The tree with $D/variant.diff reversed (A) copied to /tmp/a and built as a wheel in the
# background (its log LOG/wheel-a.log, its pid in `wheel`): the runs install it in turn with
# B's editable install.
wheel_a_beside() {
  mkdir -p /tmp/a && tar cf - --exclude=./.git --exclude=./build --exclude=./.whl --exclude=./engines \
    --exclude=./data . | tar xf - -C /tmp/a && (cd /tmp/a && patch -s -R -p1 < "${VARIANT:-$D/variant.diff}") || exit 1
  (python3 -m pip wheel --no-build-isolation --no-deps /tmp/a -w /tmp/a-wheel > "$LOG/wheel-a.log" 2>&1
   echo "wheel A rc $?" >> "$LOG/wheel-a.log") &
  wheel=$!
}

# Installs A (the wheel wheel_a_beside built) or B (the tree, editable).
use() {
  if [ "$1" = A ]; then python3 -m pip install -q --no-deps --force-reinstall /tmp/a-wheel/*.whl > "$LOG/use.log" 2>&1
  else python3 -m pip install -q --no-build-isolation --no-deps -e . > "$LOG/use.log" 2>&1; fi || { tail "$LOG/use.log"; exit 1; }
}

# One engine-bench throughput run on the tree its NAME starts with (A or B), into
# LOG/run-NAME.json and .log, its headline lines echoed (with the seconds since T0 where set).
throughput() {
  local name=$1 engine=$2 dataset=$3
  use "${name:0:1}"
  timeout 100 python3 -m kiln.runtime.bench throughput --engine "$engine" --dataset "$dataset" \
    --json "$LOG/run-$name.json" > "$LOG/run-$name.log" 2>&1
  echo "$name rc $?${T0:+ at $(( $(date +%s) - T0 )) s}"
  grep -E "output tok/s|steps [0-9.]+ s:|host a step|executor|TTFT|CUDA graphs" "$LOG/run-$name.log" | cut -c1-160
}

# BF16 + FP8 KV 128/128 (3,000 requests) on one engine sized as bench_gpu.sh sizes it (E), once
# wheel_a_beside's wheel is built: B1 A1 B2, then A2 while under A2_BEFORE seconds (default 420);
# with ONLY_B=1 (no wheel A), B1 alone.
kvfp8_128_abab() {
  KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 200 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
    > "$LOG/build.log" 2>&1
  at "build rc $?"
  E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
  local n data=$PWD/data/128-128-3000.jsonl
  if [ "${ONLY_B:-0}" = 1 ]; then throughput B1 "$E" "$data"; return; fi
  wait $wheel; tail -1 "$LOG/wheel-a.log"
  for n in B1 A1 B2; do throughput $n "$E" "$data"; done
  [ $(( $(date +%s) - T0 )) -lt "${A2_BEFORE:-420}" ] && throughput A2 "$E" "$data"
}

# The start of a one-call script: LOG=/tmp/NAME, packed into $OUT/logs.tgz when the script
# exits; T0 and `at WHAT` (WHAT and the seconds since T0); Kiln installed; the GPU named.
one_call() {
  LOG=/tmp/$1; mkdir -p "$LOG"
  trap "[ -n \"\${OUT:-}\" ] && tar czf \"\$OUT/logs.tgz\" -C /tmp $1" EXIT
  T0=$(date +%s)
  at() { echo "$1 at $(( $(date +%s) - T0 )) s"; }
  kiln_install
  nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
  at installed
}
