#!/usr/bin/env bash
# One H100 80GB HBM3, three device calls on one warm machine, from the repository root:
#   run.sh bf16    the BF16 engine sized for the three sets, then each set (no HF baseline)
#   run.sh fp8     the FP8 + FP8 KV engine sized for its two sets, then each
#   run.sh again   2048/128 twice more on the BF16 engine the machine kept
# Logs and JSON into $OUT (the logs here: bench-*.log).
cd "$(dirname "$0")/../../.."
. scripts/carried_wheels.sh; install_carried_wheels /tmp/site >/dev/null
python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/install.log 2>&1 || { tail -5 /tmp/install.log; exit 1; }
case "${1:-bf16}" in
  bf16) timeout 560 bash scripts/bench_gpu.sh 128:128:3000:0:0 2048:128:1000:0:0 2048:2048:500:0:0 > "$OUT/bench-bf16.log" 2>&1 ;;
  fp8) KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 timeout 540 bash scripts/bench_gpu.sh 128:128:3000:0:0 2048:2048:500:0:0 > "$OUT/bench-fp8.log" 2>&1 ;;
  again) for i in 1 2; do
      KILN_BENCH_ENGINE=engines/llama-3.1-8b-bf16-sized timeout 200 bash scripts/bench_gpu.sh 2048:128:1000:0:0 \
        > "$OUT/bench-bf16-2048-128-again-$i.log" 2>&1
    done ;;
esac
cp build/bench/*.json "$OUT/" 2>/dev/null
