#!/usr/bin/env bash
# engine-bench on a GPU machine, as docs/performance.md describes: builds the Llama-3.1-8B-shaped
# BF16 engine (random weights) unless it exists, prepares the datasets, and runs the sets named on
# the command line, each beside HuggingFace:
#   bash scripts/bench_gpu.sh latency 128:128:3000:256:128 2048:128:1000:64:32
# A set is ISL:OSL:REQUESTS:HF_REQUESTS:HF_BATCH. KILN_BENCH_POLICY picks the capacity scheduler
# policy (max_utilization, the default, or guaranteed_no_evict). KILN_BENCH_QUANT=fp8 (or another
# --quant mode) builds and measures a quantized engine instead, calibrated on random token ids and
# with no HF baseline (HF's figures are the BF16 run's); KILN_BENCH_KV=fp8 (or int8) quantizes
# the KV cache too. Each throughput set runs on an engine sized for its dataset by
# `engine-bench build` (max batch size: the requests the KV cache holds; max num tokens: what
# keeps that batch full), as trtllm-bench sizes its engines, built next to the shared one and
# removed after its run; KILN_BENCH_SIZED=0 runs every set on the shared engine (max batch 256).
# Results (JSON) and logs go to $OUT/bench (when set) or build/bench; each command's table prints
# as it finishes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${OUT:-build}/bench
QUANT=${KILN_BENCH_QUANT:-none}
KV=${KILN_BENCH_KV:-auto}
if [ "$QUANT" = none ]; then NAME=bf16; TAG=""; else NAME=$QUANT; TAG="-$QUANT"; fi
[ "$KV" = auto ] || { NAME="$NAME-kv$KV"; TAG="$TAG-kv$KV"; }
E=${KILN_BENCH_ENGINE:-engines/llama-3.1-8b-$NAME}
BASELINE=()
[ "$QUANT$KV" = noneauto ] && BASELINE=(--baseline hf)
SM=${KILN_BENCH_SM:-$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(a * 10 + b)")}
mkdir -p "$DIR" data
export PYTHONUNBUFFERED=1
rc=0

# engine-build's options for every engine here; the limits are the shared engine's.
BUILD=(--random-weights llama-3.1-8b --dtype bfloat16 --target-sm "$SM" --overwrite
  --quant "$QUANT" --kv-cache-dtype "$KV" --calib-size 8 --calib-seq-len 256)
# The shared engine serves latency and, with KILN_BENCH_SIZED=0, every set; sized engines only
# need the datasets, drawn from the model's vocabulary.
shared=0
[ "${KILN_BENCH_SIZED:-1}" = 0 ] && shared=1
for what in "$@"; do [ "$what" = latency ] && shared=1; done
VOCAB=$($PY -c "from kiln.builder.models import ModelConfig; from kiln.builder.random_weights import RandomCheckpoint; print(ModelConfig.from_hf(RandomCheckpoint('llama-3.1-8b').hf_config).vocab_size)") || exit 1
if [ $shared = 1 ] && [ ! -f "$E/config.json" ]; then
  echo "== engine-build $E"
  start=$(date +%s%N)
  $PY -c "import sys; from kiln.builder.cli import build_main; build_main(prog_name='engine-build')" \
    "${BUILD[@]}" --output "$E" --max-batch-size 256 --max-seq-len 4096 --max-num-tokens 8192 \
    2>&1 | tail -15 || exit 1
  echo "engine-build wall time: $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi

for what in "$@"; do
  if [ "$what" = latency ]; then
    echo "== latency 128/128"
    $PY -m kiln.runtime.bench latency --engine "$E" --input-len 128 --output-len 128 \
      --iterations 3 "${BASELINE[@]}" --json "$DIR/latency-128-128$TAG.json" 2>&1 | tail -25 || rc=1
    continue
  fi
  IFS=: read -r isl osl n hf_n hf_b <<< "$what"
  data=data/$isl-$osl-$n.jsonl
  [ -f "$data" ] || $PY -m kiln.runtime.bench prepare -o "$data" token-norm-dist --vocab-size "$VOCAB" \
    --num-requests "$n" --input-mean "$isl" --output-mean "$osl" || exit 1
  run_engine=$E
  if [ "${KILN_BENCH_SIZED:-1}" != 0 ]; then
    run_engine=$E-sized
    echo "== engine-bench build $run_engine for $data"
    start=$(date +%s%N)
    $PY -m kiln.runtime.bench build --dataset "$data" "${BUILD[@]}" --output "$run_engine" --quiet \
      2>&1 | tail -8 || { rc=1; continue; }
    echo "engine-bench build wall time: $(( ($(date +%s%N) - start) / 1000000 )) ms"
  fi
  echo "== throughput $isl/$osl, $n requests (HF: $hf_n at batch $hf_b)"
  hf=()
  [ ${#BASELINE[@]} -gt 0 ] && hf=(--baseline hf --baseline-max-requests "$hf_n" --baseline-batch-size "$hf_b")
  $PY -m kiln.runtime.bench throughput --engine "$run_engine" --dataset "$data" "${hf[@]}" \
    --capacity-scheduler-policy "${KILN_BENCH_POLICY:-max_utilization}" \
    --json "$DIR/throughput-$isl-$osl$TAG.json" 2>&1 | tail -40 || rc=1
  [ "$run_engine" = "$E" ] || rm -rf "$run_engine"  # 8-16 GB each: the disk holds few
done
exit $rc
