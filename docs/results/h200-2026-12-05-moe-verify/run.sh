#!/usr/bin/env bash
# One GPU, one call: the MoE kernels (the sparsemixer router with correctly rounded division),
# every MoE family's tiny engine against the reference backend in three dtypes, and the
# modelopt calibration tests on the GPU (carried wheels); the logs packed into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
OUTDIR=${OUT:-/tmp/x}; LOG=/tmp/logs; mkdir -p "$OUTDIR" "$LOG"
. docs/results/fp8_ab.sh
t0=$(date +%s)
kiln_install
echo "install $(( $(date +%s) - t0 )) s"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run() {  # NAME PYTEST-ARGS...
  local name=$1; shift
  timeout ${TESTS_TIMEOUT:-400} python3 -m pytest -m gpu -q -rs -p no:cacheprovider --durations=5 "$@" > "$LOG/$name.log" 2>&1 &
  pids[$name]=$!
}
declare -A pids
run moe-kernels tests/gpu/test_kernels.py -k moe
run engines-a tests/gpu/test_engines.py -k 'mixtral or qwen3_moe or olmoe or qwen2_moe'
run engines-b tests/gpu/test_engines.py -k 'granitemoe or glm4_moe'
run engines-c tests/gpu/test_engines.py -k 'ernie4_5_moe or phimoe'
run quantize tests/quantize/test_gpu.py
for name in "${!pids[@]}"; do
  wait "${pids[$name]}"; echo "-- $name rc $? ($(( $(date +%s) - t0 )) s)"; tail -4 "$LOG/$name.log"
done
tar czf "$OUTDIR/logs.tgz" -C "$LOG" .
