#!/usr/bin/env bash
# The attention kernels as they are (A: the tree) and with variant.diff (B: the tiles of keys
# every row sees whole run without masks: a prefill block's keys before its first query, a
# decode split's whole tiles), timed by tests/gpu/attention_sweep.py in one process a tree,
# A B A B. Each tree is imported as `kiln` from a copy of builder/ and quantize/ (nothing
# installed: run it before anything installs Kiln on the machine).
set -uo pipefail
cd "$(dirname "$0")/../../.."
D=docs/results/attention-unmasked-2026-12-05
LOG=${OUT:-/tmp/attention-unmasked}
mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
for tree in A B; do
  rm -rf "/tmp/tree$tree" && mkdir -p "/tmp/tree$tree/kiln" &&
    cp -r builder "/tmp/tree$tree/kiln/builder" && cp -r quantize "/tmp/tree$tree/kiln/quantize"
done
(cd /tmp/treeB/kiln && { git apply -p1 "$OLDPWD/$D/variant.diff" 2>/dev/null ||
                         patch -p1 <"$OLDPWD/$D/variant.diff" >/dev/null; }) || { echo "B not made"; exit 1; }
cmp -s /tmp/treeB/kiln/builder/kernels/attention.py builder/kernels/attention.py && { echo "B equals A"; exit 1; }
for tree in A B; do  # an installed kiln would shadow the copies
  (cd /tmp && PYTHONPATH=/tmp/tree$tree python3 -c "import kiln.builder.kernels.attention as a
assert a.__file__.startswith('/tmp/tree$tree/'), a.__file__") || exit 1
done
PREFILL=${PREFILL:-3:2048,1:2048,50:128}
PREFILL_CONFIGS=${PREFILL_CONFIGS:-64:64:4:2,128:64:4:2,64:64:4:3,128:128:8:3,64:32:4:2}
CASES=${CASES:-100:3072:1,167:3072:1,1337:192:1,1:4096:32}
CONFIGS=${CONFIGS:-64:4:2,64:2:3,32:1:2}
for round in 1 2; do
  for tree in A B; do
    echo "== round $round, tree $tree"
    if [ "$round" = 1 ]; then
      PYTHONPATH=/tmp/tree$tree timeout 200 python3 tests/gpu/attention_sweep.py --prologue \
        --cases "$CASES" --configs "$CONFIGS" --prefill "$PREFILL" \
        --prefill-configs "$PREFILL_CONFIGS" 2>&1 | tee "$LOG/sweep-$tree-$round.log" | grep -v "^ *$"
    else  # the plan's prefill configuration only
      PYTHONPATH=/tmp/tree$tree timeout 120 python3 tests/gpu/attention_sweep.py --prologue \
        --cases "$CASES" --configs "$CONFIGS" --prefill "$PREFILL" \
        --prefill-configs 64:64:4:2 2>&1 | tee "$LOG/sweep-$tree-$round.log" | grep -v "^ *$"
    fi
  done
done
