#!/usr/bin/env bash
# Sets up Kiln, builds an engine from the bundled SmolLM2-135M-Instruct GGUF and chats with it:
# on the GPU when there is one, else on the CPU reference backend.
#   scripts/quickstart.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
PROMPT=${1:-"Give me three short tips for writing clear code."}
GGUF=$($PY -c "from kiln.builder.checkpoint import find_bundled_gguf; print(find_bundled_gguf())")
if $PY -c "import torch, kiln._core as c; exit(0 if torch.cuda.is_available() and hasattr(c, 'PlanExecutor') else 1)" 2>/dev/null; then
  DTYPE=bfloat16
else
  DTYPE=float32  # the CPU reference backend is fastest in float32
fi
ENGINE=${KILN_ENGINE_DIR:-engines/smollm2-135m-$DTYPE}
if ! engine-inspect "$ENGINE" >/dev/null 2>&1; then
  engine-build --checkpoint "$GGUF" --output "$ENGINE" --dtype "$DTYPE" --max-batch-size 8 \
    --max-seq-len 2048 --overwrite
fi
engine-run --engine "$ENGINE" --chat --prompt "$PROMPT" --max-new-tokens 256
