#!/usr/bin/env bash
# One call (~200 s on a warm host with the project installed): the decode GEMMs of a
# Llama-3.1-8B-shaped layer at the 2048/2048 runs' batches, cuBLASLt beside the small-M
# kernel's SWAP configurations taking every row in one program (each weight row read once):
# FP8 at 167 rows (an FP8 + FP8 KV run's three waves on the H100), BF16 at 100 (a 16-bit
# cache's five waves). Configurations BLOCK_N:BLOCK_K:warps:stages:SWAP.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/medium-m}; mkdir -p "$LOG"
python3 -c "import kiln.builder" 2>/dev/null || { . docs/results/fp8_ab.sh; kiln_install; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout ${FP8_TIMEOUT:-200} python3 tests/gpu/gemm_sweep.py --m 167 --configs "" \
  --configs-fp8 "64:128:4:3:1,64:128:4:4:1,64:256:4:2:1,128:128:8:3:1,128:64:8:4:1" \
  > "$LOG/sweep-fp8-167.log" 2>&1
echo "fp8 rc $?"; grep -v "Warn\|warn" "$LOG/sweep-fp8-167.log"
timeout ${BF16_TIMEOUT:-150} python3 tests/gpu/gemm_sweep.py --m 100 \
  --configs "64:64:4:3:1,64:128:4:3:1,128:64:8:3:1" --configs-fp8 "" \
  > "$LOG/sweep-bf16-100.log" 2>&1
echo "bf16 rc $?"; grep -v "Warn\|warn" "$LOG/sweep-bf16-100.log"
