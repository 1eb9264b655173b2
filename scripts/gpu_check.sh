#!/usr/bin/env bash
# Kiln's GPU check, in one run on a machine with an NVIDIA GPU:
#   1. install Kiln editable (builds kiln._core with the GPU plan executor),
#   2. the speed check: decode of a Llama-3.1-8B-shaped bf16 engine beside the roofline,
#   3. the GPU tests, pytest -m gpu tests/gpu tests/quantize/test_gpu.py in concurrent shards
#      (tests/gpu/shards.py): kernels vs references, AOT cubins through the driver API, whole
#      engines vs the reference backend, HuggingFace and modelopt's fake-quantized models.
# Packages the machine lacks can be carried as wheels in .whl/ (scripts/carried_wheels.sh).
# Logs go to build/gpu-check; where $OUT is set (a lent machine's folder of files to return)
# they are packed into $OUT/gpu-check-logs.tgz when the check ends, stopped by a signal too
# (such a machine returns only a few files: a log a shard would leave some behind). The speed
# table prints last.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=build/gpu-check
rm -rf "$LOG"
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  trap 'tar czf "$OUT/gpu-check-logs.tgz" -C build gpu-check' EXIT
  trap 'exit 143' TERM INT
fi
# KILN_GPU_CHECK_LIMIT: seconds from here after which no shard goes on running (one still
# running is stopped and reported, "cut at the limit"), so that a check under a call's time
# limit ends by itself with its logs and table.
deadline=$(( $(date +%s) + ${KILN_GPU_CHECK_LIMIT:-86400} ))

. scripts/carried_wheels.sh
install_carried_wheels /tmp/kiln-wheels || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== install"
# The install's log goes to $LOG only when the install fails.
if ! $PY -m pip install --no-build-isolation --no-deps -e . >/tmp/kiln-install.log 2>&1; then
  cp /tmp/kiln-install.log "$LOG/install.log"
  tail -40 "$LOG/install.log"
  exit 1
fi
$PY -c "from kiln import _core; assert hasattr(_core, 'PlanExecutor'), 'kiln._core was built without the GPU plan executor'" || exit 1

# The tests run as concurrent pytest processes, one a shard (tests/gpu/shards.py: the kernel
# tests spend most of their time compiling on the CPU, one core a process). On a 16-core host
# they take ~8 minutes together, the speed check ~1.5 more: a machine lent for ten minutes at a
# time runs the check in two calls, each with some of the shards:
# KILN_GPU_CHECK_SHARDS="attention_b small_m ..." (names as tests/gpu/shards.py prints them;
# the speed check runs too unless KILN_GPU_CHECK_SPEED=0). Unknown names stop the check here.
if [ -n "${KILN_GPU_CHECK_SHARDS:-}" ]; then
  read -r -a shards <<<"${KILN_GPU_CHECK_SHARDS//,/ }"
else
  mapfile -t shards < <($PY tests/gpu/shards.py)
fi
[ "${#shards[@]}" -gt 0 ] || { echo "tests/gpu/shards.py named no shard"; exit 1; }
declare -A shard_args
for shard in "${shards[@]}"; do
  shard_args[$shard]=$($PY tests/gpu/shards.py "$shard") || exit 1
done
# An engine built on a CPU-only machine (tests/gpu/test_runtime_gpu.py, in the shard "rest"):
# one carried here in .carry/cpu-built (another machine's Triton), else one built here with the
# GPU hidden from the build, as on a machine without one (Triton compiles for this GPU's SM on
# its own); that build runs beside the speed check (one CPU core) and is waited for before the
# tests.
cpu_built_pid=""
if [ -d .carry/cpu-built/engine ]; then
  export KILN_CPU_BUILT_ENGINE=$PWD/.carry/cpu-built
elif [[ " ${shards[*]} " == *" rest "* ]]; then
  sm=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  (CUDA_VISIBLE_DEVICES="" $PY -c "import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from kiln_testing import make_tiny_checkpoint
make_tiny_checkpoint('llama', Path('/tmp/kiln-cpu-built/hf'))" &&
   CUDA_VISIBLE_DEVICES="" engine-build --checkpoint /tmp/kiln-cpu-built/hf --overwrite \
     --output /tmp/kiln-cpu-built/engine --dtype float32 --target-sm "$sm" --max-seq-len 64 \
     --quiet) >/tmp/kiln-cpu-built.log 2>&1 &
  cpu_built_pid=$!
fi
# The speed check runs first, so its figures are in $LOG/speed.log even when the tests run
# past a time limit (with each kernel's device time in a batch-1 decode step); its table is
# printed last.
# KILN_GPU_CHECK_SPEED=0: the tests only (the speed check takes ~100 s).
speed_rc=0
if [ "${KILN_GPU_CHECK_SPEED:-1}" != 0 ]; then
  echo "== speed check (table at the end)"
  $PY tests/gpu/speed_check.py --profile >"$LOG/speed.log" 2>&1
  speed_rc=$?
fi
if [ -n "$cpu_built_pid" ]; then
  if wait "$cpu_built_pid"; then
    export KILN_CPU_BUILT_ENGINE=/tmp/kiln-cpu-built
  else
    echo "(no engine built with the GPU hidden, /tmp/kiln-cpu-built.log says why; its test skips)"
  fi
fi
# KILN_PYTEST_ARGS: more pytest arguments, quoted as in a shell (KILN_PYTEST_ARGS="-k 'a or b'").
eval "extra=(${KILN_PYTEST_ARGS:-})"
# KILN_GPU_CHECK_JOBS: at most this many shards at once, the next starting as one ends (default:
# all at once). Under a call's time limit, fewer at once finish more shards whole: 14 at once on
# a 16-core host all ran past 590 s but 4 (2026-12-06).
jobs_max=${KILN_GPU_CHECK_JOBS:-${#shards[@]}}
echo "== pytest -m gpu tests/gpu tests/quantize/test_gpu.py (${#shards[@]} shards, $jobs_max at once)"
declare -A pids
for shard in "${shards[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
  # shellcheck disable=SC2086  # the shard's arguments are a word list
  left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 0 ] || left=1
  timeout "$left" $PY -m pytest -m gpu ${shard_args[$shard]} -q -rs -p no:cacheprovider --durations=5 \
    "${extra[@]}" >"$LOG/pytest-$shard.log" 2>&1 &
  pids[$shard]=$!
done
tests_rc=0
for shard in "${shards[@]}"; do
  wait "${pids[$shard]}"
  rc=$?
  if [ "$rc" -eq 124 ]; then echo "-- $shard: cut at the limit (KILN_GPU_CHECK_LIMIT)"; else echo "-- $shard: rc $rc"; fi
  tail -12 "$LOG/pytest-$shard.log"
  # 5: every test of the shard deselected (KILN_PYTEST_ARGS="-k ...").
  [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && tests_rc=1
done

[ "${KILN_GPU_CHECK_SPEED:-1}" = 0 ] && exit $(( tests_rc != 0 ))
echo "== speed check"
# What each decoder GEMM shape runs at batch 1 (the choices timed over the layers' GEMMs).
sed -n '/at M=1,/,/at M=8,/p' "$LOG/speed.log" | grep "timed over [2-9]" | cut -c1-220
tail -30 "$LOG/speed.log"
exit $(( tests_rc != 0 || speed_rc != 0 ))
