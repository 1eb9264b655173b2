#!/usr/bin/env bash
# One H100 call (~480 s on a fresh machine): FP8 + FP8 KV 2048/2048 (500 requests, the cache at
# 0.95 of free memory: two waves of 250) on two engines sized alike, B from the tree (long
# unsplit decode steps take the one-warp or the two-warp launch, whichever pads the step's
# programs to fewer waves) and A with the one-warp launch alone (narrow.py), B first.
cd "$(dirname "$0")/../../.."
D=docs/results/decode-waves-2026-12-06
LOG=${OUT:-/tmp/decode-waves}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
t0=$(date +%s)
kiln_install
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
export KILN_BENCH_QUANT=fp8 KILN_BENCH_KV=fp8 KILN_BENCH_KV_FRACTION=0.95
for v in B:python3 A:"python3 $D/narrow.py"; do
  name=${v%%:*}; py=${v#*:}
  export KILN_BENCH_ENGINE=engines/llama-3.1-8b-fp8-kvfp8-$name
  PYTHON="$py" KILN_BENCH_BUILD_ONLY=1 timeout 170 bash scripts/bench_gpu.sh 2048:2048:500:0:0 \
    > "$LOG/build-$name.log" 2>&1
  echo "$name build rc $? at $(( $(date +%s) - t0 )) s"; tail -1 "$LOG/build-$name.log"
  python3 - "$KILN_BENCH_ENGINE" <<'PY'
import json, sys
from kiln.builder.engine.loader import load_engine
h = load_engine(sys.argv[1]).kernels
print("  resident symbols:", h.get("resident"), "decode launches a layer:",
      sum(1 for s in h["program"] if s["kind"] == "kernel" and h["kernels"][s["kernel"]]["fn"]
          .endswith(".paged_decode_kernel")) // h["kv_cache"]["num_layers"])
PY
  OUT=/tmp/bench-$name timeout 170 bash scripts/bench_gpu.sh 2048:2048:500:0:0 > "$LOG/bench-$name.log" 2>&1
  echo "$name run rc $? at $(( $(date +%s) - t0 )) s"
  grep -E "output tok/s|peak batch|decode-only|with prompt tokens" "$LOG/bench-$name.log" | cut -c1-150
  cp /tmp/bench-$name/bench/throughput-2048-2048-fp8-kvfp8.json "$LOG/throughput-$name.json" 2>/dev/null
done
