#!/usr/bin/env bash
# engine_vs_sweep.py on a GPU with Kiln's kernels imported from the tree (nothing built).
cd "$(dirname "$0")/../../.."
SHIM=/tmp/kiln-shim
mkdir -p $SHIM/kiln && : > $SHIM/kiln/__init__.py
for p in builder quantize runtime; do ln -sfn "$PWD/$p" $SHIM/kiln/$p; done
PYTHONPATH=$SHIM timeout 120 python3 docs/results/tma-glu-2026-12-07/engine_vs_sweep.py 2>&1 | tee "${OUT:-/tmp}/engine-vs-sweep.txt"
