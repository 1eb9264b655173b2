#!/usr/bin/env bash
# One H200, one call: FP8 + FP8 KV engines built side by side with the one-row kernel of before
# (A: variant.diff reversed) and with e4m3 weights read as words of four values (B), the GLU and
# FP8 engine GPU tests on B's kernels beside the builds, then each engine timed twice (A B A B).
cd "$(dirname "$0")/../../.."
D=docs/results/h200-2026-12-04-fp8-one-row
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -30 /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
ARGS="--random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 --kv-cache-dtype fp8 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite"
t=$(date +%s)
patch -s -R -p1 < $D/variant.diff || exit 1
# A imports the kernels (their source is read then) before B's are put back.
python3 -c "import sys, pathlib, kiln.builder.kernels.gemm, kiln.builder.kernels.pdl
pathlib.Path('/tmp/A.imported').touch()
from kiln.builder.cli import build_main
sys.exit(build_main())" --output /tmp/eA $ARGS > "$OUT/build-A.log" 2>&1 &
pa=$!
while [ ! -e /tmp/A.imported ] && kill -0 $pa 2>/dev/null; do sleep 1; done
patch -s -p1 < $D/variant.diff || exit 1
engine-build --output /tmp/eB $ARGS > "$OUT/build-B.log" 2>&1 &
pb=$!
declare -A tp
for s in gemv_glu quant_engines; do
  python3 -m pytest -m gpu $(python3 tests/gpu/shards.py $s) -q -rs -p no:cacheprovider > "$OUT/tests-$s.log" 2>&1 &
  tp[$s]=$!
done
wait $pa; echo "build A rc $? $(( $(date +%s) - t )) s"; tail -1 "$OUT/build-A.log"
wait $pb; echo "build B rc $? $(( $(date +%s) - t )) s"; tail -1 "$OUT/build-B.log"
for s in gemv_glu quant_engines; do wait ${tp[$s]}; echo "tests $s rc $?"; tail -1 "$OUT/tests-$s.log"; done
echo "tests done $(( $(date +%s) - t )) s"
run() {
  local name=$1 e=$2; shift 2
  local t0=$(date +%s)
  timeout 110 python3 tests/gpu/speed_check.py --engine $e --batches 1,8,64 --steps 128 "$@" > "$OUT/speed-$name.log" 2>&1
  echo "== $name rc $? ($(( $(date +%s) - t0 )) s)"; grep -E "graphs|roofline" "$OUT/speed-$name.log" | grep -E "ms/step|roofline" | tail -8
}
run A1 /tmp/eA --profile --profile-batches 1
run B1 /tmp/eB --profile --profile-batches 1
run A2 /tmp/eA
run B2 /tmp/eB
