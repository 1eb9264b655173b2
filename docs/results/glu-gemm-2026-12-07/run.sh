#!/usr/bin/env bash
# One GPU call (~2-3 min on an H100; nothing to build): the gate/up GEMM with the SiLU-mul
# inside a persistent Triton GEMM against cuBLASLt then silu_mul_kernel (glu_sweep.py), at the
# row counts of a 128/128 run's steps. Kiln's kernels are imported from the tree through a
# package shim, so the C++ extension need not be built. Output in $OUT/sweep.txt.
cd "$(dirname "$0")/../../.."
SHIM=/tmp/kiln-shim
mkdir -p $SHIM/kiln && : > $SHIM/kiln/__init__.py
for p in builder quantize runtime; do ln -sfn "$PWD/$p" $SHIM/kiln/$p; done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader
PYTHONPATH=$SHIM timeout ${SWEEP_TIMEOUT:-400} python3 docs/results/glu-gemm-2026-12-07/glu_sweep.py "$@" \
  2>&1 | tee "${OUT:-/tmp}/sweep.txt"
