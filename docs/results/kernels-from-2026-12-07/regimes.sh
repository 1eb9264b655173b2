#!/usr/bin/env bash
# regimes.py on a GPU with Kiln's kernels imported from the tree (nothing built; ~1.5 minutes).
cd "$(dirname "$0")/../../.."
SHIM=/tmp/kiln-shim
mkdir -p $SHIM/kiln && : > $SHIM/kiln/__init__.py
for p in builder quantize runtime; do ln -sfn "$PWD/$p" $SHIM/kiln/$p; done
PYTHONPATH=$SHIM${PYTHONPATH:+:$PYTHONPATH} timeout 180 python3 docs/results/kernels-from-2026-12-07/regimes.py 2>&1 \
  | tee "${OUT:-/tmp}/regimes.txt"
