#!/usr/bin/env bash
# One H100 call (~420 s on a fresh machine): the FP8 + FP8 KV 2048/2048 run's steps by kernel,
# both kinds. Its sized engine (the cache at 0.95 of free memory: two waves of 250), then one
# wave of 250 requests twice with `engine-bench throughput --profile-steps`: steps 10-19 (the
# wave's prompts, ~3.8 of 2,048 tokens a step beside the decodes of those admitted before) and,
# on a dataset of 250 x 2,048 in and 1,100 out, steps 1040-1044 (decode-only, 250 sequences at
# ~3,030 tokens: the full run's decode-only steps average ~3,072). Then the executor's host time
# (executor-host-2026-12-06) on this machine's CPU.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/fp8-2048-steps}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
t0=$(date +%s)
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
echo "install $(( $(date +%s) - t0 )) s"
E=engines/llama-3.1-8b-fp8-kvfp8-sized
KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 KILN_BENCH_KV_FRACTION=0.95 KILN_BENCH_BUILD_ONLY=1 \
  timeout 200 bash scripts/bench_gpu.sh 2048:2048:500:0:0 > "$LOG/build.log" 2>&1
echo "build rc $? at $(( $(date +%s) - t0 )) s"; tail -2 "$LOG/build.log" | cut -c1-160
python3 -m kiln.runtime.bench prepare -o data/2048-1100-250.jsonl token-norm-dist \
  --vocab-size 128256 --num-requests 250 --input-mean 2048 --output-mean 1100 > /dev/null
run() {  # NAME DATASET WINDOW
  timeout 110 python3 -m kiln.runtime.bench throughput --engine "$E" --dataset "$2" \
    --num-requests 250 --max-batch-size 250 --kv-cache-free-gpu-memory-fraction 0.95 \
    --profile-steps "$3" --json "$LOG/$1.json" > "$LOG/$1.log" 2>&1
  echo "$1 rc $? at $(( $(date +%s) - t0 )) s"
  grep -v "Warn\|_warn_once" "$LOG/$1.log" | grep -E -A24 "output tok/s" | grep -v "TTFT\|ITL\|E2E\|mean " | cut -c1-150
}
run prompt data/2048-2048-500.jsonl 10:10
run decode data/2048-1100-250.jsonl 1040:5
bash docs/results/executor-host-2026-12-06/run.sh --no-install 2>&1 | tail -12
echo "total $(( $(date +%s) - t0 )) s"
