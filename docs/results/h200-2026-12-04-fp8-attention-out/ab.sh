#!/usr/bin/env bash
# bash ab.sh tests fused | bash ab.sh notests nofuse   (one H200; the second without its tests)
cd "$(dirname "$0")/../../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -30 /tmp/install.log; exit 1; }
ARGS="--random-weights llama-3.1-8b --dtype bfloat16 --quant fp8 --kv-cache-dtype fp8 --max-batch-size 64 --target-sm 90 --calib-size 4 --calib-seq-len 128 --quiet --overwrite"
if [ "$1" = tests ]; then
  python3 -m pytest -m gpu tests/gpu/test_kernels.py -q -p no:cacheprovider -k "fp8 or split_kv_decode_quantized or rope_inside" > "$OUT/tests-attn.log" 2>&1 &
  p1=$!
  python3 -m pytest -m gpu tests/gpu/test_quant_engines.py -q -p no:cacheprovider > "$OUT/tests-qeng.log" 2>&1 &
  p2=$!
fi
t=$(date +%s)
if [ "$2" = nofuse ]; then python3 docs/results/h200-2026-12-04-fp8-attention-out/apart_build.py --output /tmp/e $ARGS > "$OUT/build-$2.log" 2>&1
else engine-build --output /tmp/e $ARGS > "$OUT/build-$2.log" 2>&1; fi
echo "build $2 rc $? $(( $(date +%s) - t )) s"; tail -3 "$OUT/build-$2.log"
if [ "$1" = tests ]; then wait $p1; echo "attn tests rc $?"; tail -3 "$OUT/tests-attn.log"; wait $p2; echo "quant engine tests rc $?"; tail -3 "$OUT/tests-qeng.log"; fi
python3 tests/gpu/speed_check.py --engine /tmp/e --batches 1,8,64 --steps 128 --profile --profile-batches 1 > "$OUT/speed-$2.log" 2>&1
echo "== speed $2"; grep -E "graphs|roofline|first token" "$OUT/speed-$2.log" | tail -9; grep -A12 "batch-1 decode step" "$OUT/speed-$2.log" | grep -v -i warn | head -12
