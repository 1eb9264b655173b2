# Sourced by run.sh and run2.sh from the repository root, after one_call: the sized BF16 + FP8 KV
# engine built (E), and `run NAME ROWS`: 128/128 (3,000 requests) with --kernels-from-rows ROWS
# into LOG/run-NAME.json and .log, its headline lines echoed.
KILN_BENCH_KV=fp8 KILN_BENCH_BUILD_ONLY=1 timeout 240 bash scripts/bench_gpu.sh 128:128:3000:0:0 \
  > "$LOG/build.log" 2>&1
at "build rc $?: $(tail -n 1 "$LOG/build.log")"
E=$PWD/engines/llama-3.1-8b-bf16-kvfp8-sized
data=$PWD/data/128-128-3000.jsonl
run() {  # NAME ROWS
  timeout 100 python3 -m kiln.runtime.bench throughput --engine "$E" --dataset "$data" \
    --kernels-from-rows "$2" --json "$LOG/run-$1.json" > "$LOG/run-$1.log" 2>&1
  at "$1 (kernels from $2 rows) rc $?"
  grep -E "output tok/s|steps [0-9.]+ s:|TTFT" "$LOG/run-$1.log" | cut -c1-160
}
