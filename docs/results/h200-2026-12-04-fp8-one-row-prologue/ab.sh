#!/usr/bin/env bash
# One H200, one call, from a tree without the variant (2419ed2): FP8 + FP8 KV engines built side
# by side with the one-row kernel as it is (A) and with variant.diff applied (B: the prologue
# computed on contiguous x and split into the four strided vectors, plus a fifth FP8
# configuration); the one-row GPU tests and the FP8 engine tests on B's kernels beside the
# builds; then each engine timed twice (A B A B).
cd "$(dirname "$0")/../../.."
D=docs/results/h200-2026-12-04-fp8-one-row-prologue
X=/tmp/x; mkdir -p $X
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -30 /tmp/install.log; exit 1; }
ARGS="--random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 --kv-cache-dtype fp8 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite"
t=$(date +%s)
python3 -c "import sys, pathlib, kiln.builder.kernels.gemm, kiln.builder.kernels.pdl
pathlib.Path('/tmp/A.imported').touch()
from kiln.builder.cli import build_main
sys.exit(build_main())" --output /tmp/eA $ARGS > "$X/build-A.log" 2>&1 &
pa=$!
while [ ! -e /tmp/A.imported ] && kill -0 $pa 2>/dev/null; do sleep 1; done
patch -s -p1 < $D/variant.diff || exit 1
engine-build --output /tmp/eB $ARGS > "$X/build-B.log" 2>&1 &
pb=$!
declare -A tp
for d in dtype0 dtype1 dtype2; do
  timeout 230 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "(test_gemv_fp8 or test_gemv_glu and fp8) and $d" -q -p no:cacheprovider > "$X/tests-fp8-$d.log" 2>&1 &
  tp[fp8-$d]=$!
done
timeout 230 python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "test_gemv and not test_gemv_fp8 and not test_gemv_glu" -q -p no:cacheprovider > "$X/tests-gemv16.log" 2>&1 &
tp[gemv16]=$!
timeout 230 python3 -m pytest -m gpu tests/gpu/test_quant_engines.py -q -p no:cacheprovider > "$X/tests-quant_engines.log" 2>&1 &
tp[quant_engines]=$!
wait $pa; echo "build A rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$X/build-A.log"
wait $pb; echo "build B rc $? $(( $(date +%s) - t )) s"; tail -n 1 "$X/build-B.log"
for s in "${!tp[@]}"; do wait ${tp[$s]}; echo "tests $s rc $?: $(tail -n 1 $X/tests-$s.log)"; done
echo "tests done $(( $(date +%s) - t )) s"
run() {
  local name=$1 e=$2; shift 2
  local t0=$(date +%s)
  timeout 40 python3 tests/gpu/speed_check.py --engine $e --batches 1,8,64 --steps 128 "$@" > "$X/speed-$name.log" 2>&1
  echo "== $name rc $? ($(( $(date +%s) - t0 )) s)"; grep -E "copy|graphs|roofline" "$X/speed-$name.log" | grep -E "TB/s|ms/step|roofline" | tail -9
}
run A1 /tmp/eA --profile --profile-batches 1
run B1 /tmp/eB --profile --profile-batches 1
run A2 /tmp/eA
run B2 /tmp/eB
echo "done $(( $(date +%s) - t )) s"
tar -C $X -czf "$OUT/ab.tgz" .
