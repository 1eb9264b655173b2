#!/usr/bin/env bash
# Kiln's GPU check, in one run on a machine with an NVIDIA GPU:
#   1. install Kiln editable (builds kiln._core with the GPU plan executor),
#   2. the speed check: decode of a Llama-3.1-8B-shaped bf16 engine beside the roofline,
#   3. the GPU tests: pytest -m gpu tests/gpu tests/quantize/test_gpu.py (kernels vs references,
#      AOT cubins through the driver API, whole engines vs the reference backend, HuggingFace
#      and modelopt's fake-quantized models).
# Pure-Python packages the machine lacks can be carried as wheels in .whl/. Logs go to $OUT
# (when set) or build/gpu-check; the speed table prints last.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-build/gpu-check}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/kiln-wheels .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kiln-wheels${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== install"
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$LOG/install.log" 2>&1; then
  tail -40 "$LOG/install.log"
  exit 1
fi
$PY -c "from kiln import _core; assert hasattr(_core, 'PlanExecutor'), 'kiln._core was built without the GPU plan executor'" || exit 1

# An engine built on a CPU-only machine, carried here (see tests/gpu/test_runtime_gpu.py).
[ -d .carry/cpu-built/engine ] && export KILN_CPU_BUILT_ENGINE=$PWD/.carry/cpu-built
# The speed check runs first, so its figures are in $LOG/speed.log even when the tests run
# past a time limit (with each kernel's device time in a batch-1 decode step); its table is
# printed last.
echo "== speed check (table at the end)"
$PY tests/gpu/speed_check.py --profile >"$LOG/speed.log" 2>&1
speed_rc=$?
echo "== pytest -m gpu tests/gpu tests/quantize/test_gpu.py"
$PY -m pytest -m gpu tests/gpu tests/quantize/test_gpu.py -q -rs -p no:cacheprovider --durations=12 \
  ${KILN_PYTEST_ARGS:-} 2>&1 | tee "$LOG/pytest.log" | tail -40
tests_rc=${PIPESTATUS[0]}

echo "== speed check"
tail -30 "$LOG/speed.log"
exit $(( tests_rc != 0 || speed_rc != 0 ))
