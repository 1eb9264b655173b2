#!/usr/bin/env bash
# engine-bench on a GPU machine, as docs/performance.md describes: builds a Llama-3.1-8B-shaped
# BF16 engine (random weights), prepares the datasets, and runs the sets named on the command
# line, each beside HuggingFace:
#   bash scripts/bench_gpu.sh latency 128:128:3000:256:128 2048:128:1000:64:32
# A set is ISL:OSL:REQUESTS:HF_REQUESTS:HF_BATCH (HF_REQUESTS 0: no HF run). KILN_BENCH_POLICY
# picks the capacity scheduler policy (max_utilization, the default, or guaranteed_no_evict).
# KILN_BENCH_QUANT=fp8 (or another --quant mode) builds and measures a quantized engine instead,
# calibrated on random token ids and with no HF baseline (HF's figures are the BF16 run's);
# KILN_BENCH_KV=fp8 (or int8) quantizes the KV cache too.
# The engine is sized for the sets' datasets by `engine-bench build`, as trtllm-bench sizes its
# engines: its max batch size is the most requests of any dataset the KV cache holds, and each
# set runs capped at its own dataset's batch (`engine-bench throughput --max-batch-size`: what
# the cache holds, or the batch that makes equal waves of a dataset whose requests finish
# together); latency runs on it too. KILN_BENCH_SIZED=0 runs everything on the engine of max
# batch 256 instead. KILN_BENCH_BUILD_ONLY=1 builds the engine (and the datasets) and stops.
# KILN_BENCH_KV_FRACTION (default 0.9) is the share of free memory the KV cache gets, in the
# sizing and in the runs (trtllm-bench's --kv_cache_free_gpu_mem_fraction; TensorRT-LLM's
# published throughput figures often take 0.95).
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
BASELINE=()
[ "$QUANT$KV" = noneauto ] && BASELINE=(--baseline hf)
SM=${KILN_BENCH_SM:-$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(a * 10 + b)")}
SIZED=${KILN_BENCH_SIZED:-1}
FRACTION=(--kv-cache-free-gpu-memory-fraction "${KILN_BENCH_KV_FRACTION:-0.9}")
mkdir -p "$DIR" data
export PYTHONUNBUFFERED=1
rc=0

# engine-build's options for every engine here (the limits come after them).
BUILD=(--random-weights llama-3.1-8b --dtype bfloat16 --target-sm "$SM" --overwrite
  --quant "$QUANT" --kv-cache-dtype "$KV" --calib-size 8 --calib-seq-len 256)
VOCAB=$($PY -c "from kiln.builder.models import ModelConfig; from kiln.builder.random_weights import RandomCheckpoint; print(ModelConfig.from_hf(RandomCheckpoint('llama-3.1-8b').hf_config).vocab_size)") || exit 1

# The throughput sets' datasets, drawn from the model's vocabulary.
sizing=()
for what in "$@"; do
  [ "$what" = latency ] && continue
  IFS=: read -r isl osl n _ <<< "$what"
  data=data/$isl-$osl-$n.jsonl
  [ -f "$data" ] || $PY -m kiln.runtime.bench prepare -o "$data" token-norm-dist --vocab-size "$VOCAB" \
    --num-requests "$n" --input-mean "$isl" --output-mean "$osl" || exit 1
  sizing+=(--dataset "$data")
done

start=$(date +%s%N)
if [ "$SIZED" != 0 ] && [ ${#sizing[@]} -gt 0 ]; then
  # Built anew each time (the sets decide its limits), unless KILN_BENCH_ENGINE names one built.
  E=${KILN_BENCH_ENGINE:-engines/llama-3.1-8b-$NAME-sized}
  if [ -z "${KILN_BENCH_ENGINE:-}" ] || [ ! -f "$E/config.json" ]; then
    echo "== engine-bench build $E"
    $PY -m kiln.runtime.bench build "${sizing[@]}" "${FRACTION[@]}" "${BUILD[@]}" --output "$E" --quiet 2>&1 \
      | tail -12 || exit 1
  fi
else
  E=${KILN_BENCH_ENGINE:-engines/llama-3.1-8b-$NAME}
  if [ ! -f "$E/config.json" ]; then
    echo "== engine-build $E"
    $PY -c "import sys; from kiln.builder.cli import build_main; build_main(prog_name='engine-build')" \
      "${BUILD[@]}" --output "$E" --max-batch-size 256 --max-seq-len 4096 --max-num-tokens 8192 \
      2>&1 | tail -15 || exit 1
  fi
fi
echo "engine build wall time: $(( ($(date +%s%N) - start) / 1000000 )) ms"
[ "${KILN_BENCH_BUILD_ONLY:-0}" = 1 ] && exit 0

for what in "$@"; do
  if [ "$what" = latency ]; then
    echo "== latency 128/128"
    $PY -m kiln.runtime.bench latency --engine "$E" --input-len 128 --output-len 128 \
      --iterations 3 "${BASELINE[@]}" --json "$DIR/latency-128-128$TAG.json" 2>&1 | tail -25 || rc=1
    continue
  fi
  IFS=: read -r isl osl n hf_n hf_b <<< "$what"
  data=data/$isl-$osl-$n.jsonl
  cap=()
  if [ "$SIZED" != 0 ]; then
    # This dataset's own batch: what the KV cache holds of its requests, or equal waves of them.
    batch=$($PY -m kiln.runtime.bench build --print-only --dataset "$data" "${FRACTION[@]}" "${BUILD[@]}" \
      --output "$E" \
      | sed -n 's/.* run at batch \([0-9]*\)$/\1/p')
    [ -n "$batch" ] && cap=(--max-batch-size "$batch")
  fi
  echo "== throughput $isl/$osl, $n requests ${cap[*]} (HF: $hf_n at batch $hf_b)"
  hf=()
  [ ${#BASELINE[@]} -gt 0 ] && [ "${hf_n:-0}" != 0 ] \
    && hf=(--baseline hf --baseline-max-requests "$hf_n" --baseline-batch-size "$hf_b")
  $PY -m kiln.runtime.bench throughput --engine "$E" --dataset "$data" "${cap[@]}" "${hf[@]}" \
    --capacity-scheduler-policy "${KILN_BENCH_POLICY:-max_utilization}" "${FRACTION[@]}" \
    --json "$DIR/throughput-$isl-$osl$TAG.json" 2>&1 | tail -40 || rc=1
done
exit $rc
