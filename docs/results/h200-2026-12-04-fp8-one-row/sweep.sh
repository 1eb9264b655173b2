#!/usr/bin/env bash
# One H200, one call: the one-row kernel's FP8 path (e4m3 words widened in PTX) against the
# kernel of before and the small-M and cuBLASLt choices on the decode GEMMs at M = 1, with the
# one-row GPU tests beside it (old_kernel.py says where the kernel of before comes from).
cd "$(dirname "$0")/../../.."
D=docs/results/h200-2026-12-04-fp8-one-row
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -30 /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
t=$(date +%s)
declare -A tp
for d in dtype0 dtype1 dtype2; do
  python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "test_gemv_fp8 and $d" -q -rs -p no:cacheprovider > "$OUT/tests-gemv_fp8-$d.log" 2>&1 &
  tp[fp8-$d]=$!
  python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "test_gemv_glu and fp8 and $d" -q -rs -p no:cacheprovider > "$OUT/tests-glu-$d.log" 2>&1 &
  tp[glu-$d]=$!
  python3 -m pytest -m gpu tests/gpu/test_kernels.py -k "test_gemv and not test_gemv_fp8 and not test_gemv_glu and $d" -q -rs -p no:cacheprovider > "$OUT/tests-gemv-$d.log" 2>&1 &
  tp[gemv-$d]=$!
done
SHIPPED_FP8=64:256:4:4:1,128:128:4:4:1,16:512:4:4:0,32:256:4:4:0,16:256:2:6:0,64:256:4:3:0
ONE_ROW_FP8=8:1024:4,4:1024:2,16:1024:8,8:2048:4,16:512:4,8:512:4,4:2048:4,32:512:8,16:2048:8,4:512:2
python3 tests/gpu/gemm_sweep.py --configs "" --configs-fp8 "" --one-row-fp8 "$ONE_ROW_FP8" > "$OUT/sweep-new.log" 2>&1
echo "sweep new rc $? $(( $(date +%s) - t )) s"
python3 $D/old_kernel.py --configs "" --configs-fp8 "$SHIPPED_FP8" --one-row "" --one-row-fp8 "8:1024:4,4:1024:2,16:1024:8,8:2048:4" > "$OUT/sweep-before.log" 2>&1
echo "sweep before rc $? $(( $(date +%s) - t )) s"
for k in "${!tp[@]}"; do wait ${tp[$k]}; echo "tests $k rc $?"; tail -1 "$OUT/tests-$k.log"; done
echo "done $(( $(date +%s) - t )) s"
cat "$OUT/sweep-new.log"
cat "$OUT/sweep-before.log"
