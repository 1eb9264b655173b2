#!/usr/bin/env bash
# residual.py, l2_prefetch.py and kernels-from-2026-12-07/regimes.py on a GPU, Kiln's kernels
# imported from the tree (nothing built; ~3 minutes). Output in $OUT (or /tmp).
cd "$(dirname "$0")/../../.."
SHIM=/tmp/kiln-shim
mkdir -p $SHIM/kiln && : > $SHIM/kiln/__init__.py
for p in builder quantize runtime; do ln -sfn "$PWD/$p" $SHIM/kiln/$p; done
D=docs/results/residual-prefetch-2026-12-07
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv,noheader
for s in "$D/l2_prefetch.py" "$D/residual.py" docs/results/kernels-from-2026-12-07/regimes.py; do
  n=$(basename "$s" .py)
  PYTHONPATH=$SHIM${PYTHONPATH:+:$PYTHONPATH} timeout ${LIMIT:-200} python3 "$s" 2>&1 | tee "${OUT:-/tmp}/$n.txt"
  echo "== $n rc ${PIPESTATUS[0]}"
done
