#!/usr/bin/env bash
# One GPU, one call: Qwen3-30B-A3B's shape (random bf16 weights, 8 of its 48 layers, 8 of 128
# experts a token), its decode steps at batch 1, 8 and 64 beside the roofline (the weights a
# token reads: its routed experts, not all of them), each kernel's device time at batch 1 and
# 64; then HuggingFace transformers' generate on the same 8 layers, for scale.
cd "$(dirname "$0")/../../.."
LOG=${OUT:-/tmp/x}; mkdir -p "$LOG"
. docs/results/fp8_ab.sh
kiln_install
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 300 python3 tests/gpu/speed_check.py --shape qwen3-30b-a3b --layers 8 --steps 128 \
  --batches 1,8,64 --profile --profile-batches 1,64 > "$LOG/speed-moe.log" 2>&1
echo "speed check rc $?"; grep -E "moe_|all kernels" "$LOG/speed-moe.log" | head -16
tail -22 "$LOG/speed-moe.log"
timeout 120 python3 - <<'PY' 2>&1 | tail -3
import time, torch, transformers
from kiln.builder.model_shapes import real_config
cfg = real_config("qwen3-30b-a3b") | {"num_hidden_layers": 8}
for key in ("architectures", "model_type", "torch_dtype"):
    cfg.pop(key)
config = transformers.Qwen3MoeConfig(**cfg)
with torch.device("cuda"):
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
ids = torch.randint(0, config.vocab_size, (1, 128), device="cuda")
spent = {}
for n in (8, 72):
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize()
    spent[n] = time.perf_counter() - start
print(f"HF generate, 8 of 48 layers, batch 1: {(spent[72] - spent[8]) / 64 * 1e3:.2f} ms a token")
PY
