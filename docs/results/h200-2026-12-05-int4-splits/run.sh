#!/usr/bin/env bash
# One H200, one call, from the repository root (log into $OUT): gemm_sweep.py's int4
# tensor-core rows at M = 1 (AWQ's groups of 128 with offsets, Llama-3.1-8B's four layer shapes)
# over K splits S and block shapes (BLOCK_N:BLOCK_H:warps:stages:BLOCK_M:S).
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/x}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
t=$(date +%s)
MMA=32:64:1:3:8:1,32:64:1:3:8:2,32:64:1:3:8:3,32:64:1:3:8:4,32:64:1:3:8:6,64:64:2:3:8:1,64:64:2:3:8:2,64:64:2:3:8:3,64:64:2:3:8:4,64:64:2:3:8:6,64:64:2:3:8:9,64:64:2:3:8:16,32:64:1:4:8:2,32:64:1:2:8:2,16:64:1:3:8:1,16:64:1:3:8:2,16:64:1:3:8:4
timeout 200 python3 tests/gpu/gemm_sweep.py --skip-16bit --mma $MMA > "$LOG/sweep.log" 2>&1
echo "sweep rc $? $(( $(date +%s) - t )) s"; grep "int4 mma" "$LOG/sweep.log"
