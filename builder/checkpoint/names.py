"""Canonical weight names and the maps from HuggingFace and GGUF tensor names to them.

The canonical names are the contract in docs/architecture.md ("Canonical weight names"); every
reader yields only these, so model code never sees a file format's own naming.
"""

from __future__ import annotations

import re

_HF_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template)
    for pattern, template in (
        # "model." is absent in checkpoints saved from the bare decoder (LlamaModel).
        (r"^(?:model\.)?embed_tokens\.weight$", "embed.weight"),
        (r"^(?:model\.)?norm\.weight$", "final_norm.weight"),
        (r"^lm_head\.(weight|bias)$", "lm_head.{0}"),
        (r"^(?:model\.)?layers\.(\d+)\.input_layernorm\.weight$", "layers.{0}.attn_norm.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)$", "layers.{0}.{1}.{2}"),
        (r"^(?:model\.)?layers\.(\d+)\.self_attn\.([qk])_norm\.weight$", "layers.{0}.{1}_norm.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.post_attention_layernorm\.weight$", "layers.{0}.mlp_norm.weight"),
        # Gemma 2 and 3 ("sandwich" norms): the MLP's input norm and its output's norm.
        (r"^(?:model\.)?layers\.(\d+)\.pre_feedforward_layernorm\.weight$", "layers.{0}.mlp_norm.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.post_feedforward_layernorm\.weight$", "layers.{0}.mlp_out_norm.weight"),
        # StarCoder2: the norms' biases, its MLP's c_fc (up, ungated) and c_proj (down).
        (r"^(?:model\.)?layers\.(\d+)\.input_layernorm\.bias$", "layers.{0}.attn_norm.bias"),
        (r"^(?:model\.)?layers\.(\d+)\.post_attention_layernorm\.bias$", "layers.{0}.mlp_norm.bias"),
        (r"^(?:model\.)?norm\.bias$", "final_norm.bias"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.c_fc\.(weight|bias)$", "layers.{0}.up.{1}"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.c_proj\.(weight|bias)$", "layers.{0}.down.{1}"),
        # GLM-4's names for the norms on the attention's and the MLP's outputs.
        (r"^(?:model\.)?layers\.(\d+)\.post_self_attn_layernorm\.weight$", "layers.{0}.attn_out_norm.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.post_mlp_layernorm\.weight$", "layers.{0}.mlp_out_norm.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)$", "layers.{0}.{1}.{2}"),
        # Mixtures of experts: the router (GLM-4.5's with its correction bias), each expert's
        # MLP (Mixtral's w1 gate, w3 up, w2 down), the shared expert (Qwen2-MoE's shared_expert
        # and its gate, GLM-4.5's shared_experts).
        (r"^(?:model\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.weight$", "layers.{0}.router.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.block_sparse_moe\.router\.layer\.weight$", "layers.{0}.router.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$",
         "layers.{0}.experts.{1}.{2}.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w1\.weight$", "layers.{0}.experts.{1}.gate.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w3\.weight$", "layers.{0}.experts.{1}.up.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w2\.weight$", "layers.{0}.experts.{1}.down.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.shared_experts?\.(gate|up|down)_proj\.weight$", "layers.{0}.shared.{1}.weight"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.(?:gate|moe_statics)\.e_score_correction_bias$",
         "layers.{0}.router.correction_bias"),
        (r"^(?:model\.)?layers\.(\d+)\.mlp\.shared_expert_gate\.weight$", "layers.{0}.shared_gate.weight"),
    )
)

# Tensors some families store fused, read as their parts: q/k/v and gate/up (Phi-3), split by
# rows; each layer's experts stacked (Granite MoE's input_linear [E, 2I, H], gate then up, and
# output_linear [E, H, I]), split by expert and rows.
_HF_FUSED = re.compile(r"^(?:model\.)?layers\.(\d+)\.(?:self_attn\.(qkv)_proj|mlp\.(gate_up)_proj|"
                       r"block_sparse_moe\.(input|output)_linear)\.(\w+)$")


def is_fused_hf(hf_name: str) -> bool:
    """Whether a HuggingFace tensor belongs to a fused q/k/v, gate/up or experts module."""
    return _HF_FUSED.match(hf_name) is not None


def fused_parts_from_hf(hf_name: str, hf_config: dict
                        ) -> tuple[tuple[int, ...], list[tuple[str, int | None, int, int]]] | None:
    """(the fused tensor's leading dims as config.json implies them, [(canonical name, expert
    index or None, first row, end row)]) of a fused HuggingFace weight or bias, or None."""
    match = _HF_FUSED.match(hf_name)
    if not match or match.group(5) not in ("weight", "bias"):
        return None
    layer, qkv, _, experts, kind = match.groups()
    if experts:
        width = int(hf_config["intermediate_size"])
        sizes = ((("gate", width), ("up", width)) if experts == "input"
                 else (("down", int(hf_config["hidden_size"])),))
    elif qkv:
        heads = int(hf_config["num_attention_heads"])
        head_dim = int(hf_config.get("head_dim") or int(hf_config["hidden_size"]) // heads)
        kv = int(hf_config.get("num_key_value_heads") or heads) * head_dim
        sizes = (("q", heads * head_dim), ("k", kv), ("v", kv))
    else:
        sizes = (("gate", int(hf_config["intermediate_size"])), ("up", int(hf_config["intermediate_size"])))
    spans, row = [], 0
    for part, size in sizes:
        spans.append((part, row, row + size))
        row += size
    if not experts:
        return (row,), [(f"layers.{layer}.{part}.{kind}", None, a, b) for part, a, b in spans]
    count = int(hf_config.get("num_local_experts") or hf_config["num_experts"])
    return (count, row), [(f"layers.{layer}.experts.{e}.{part}.{kind}", e, a, b)
                          for e in range(count) for part, a, b in spans]


_GGUF_LAYER = {
    "attn_norm": "attn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "attn_q_norm": "q_norm",
    "attn_k_norm": "k_norm",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
    # mixtures of experts: the router, the shared expert and its gate (Qwen2-MoE)
    "ffn_gate_inp": "router",
    "ffn_gate_shexp": "shared.gate",
    "ffn_up_shexp": "shared.up",
    "ffn_down_shexp": "shared.down",
    "ffn_gate_inp_shexp": "shared_gate",
}
_GGUF_GLOBAL = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
# A layer's experts: stacked [E, rows, cols] (ffn_gate_exps), or one tensor each (older
# Mixtral files: ffn_gate.3).
_GGUF_EXPERTS = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)(?:_exps|\.(\d+))\.weight$")

# Tensors every llama-family decoder layer must have; biases and q/k norms are optional.
_LAYER_REQUIRED = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")


# A multimodal checkpoint's language model (hf_files.language_model_config): its tensors
# under the wrapper's prefixes, transformers 4's and 5's; the vision tower's are not read.
_WRAPPED_PREFIXES = (("language_model.model.", ""), ("model.language_model.", ""),
                     ("language_model.lm_head.", "lm_head."))


def unwrapped(hf_name: str) -> str:
    """A tensor name of a multimodal checkpoint's language model as the bare model names it."""
    for prefix, replacement in _WRAPPED_PREFIXES:
        if hf_name.startswith(prefix):
            return replacement + hf_name[len(prefix):]
    return hf_name


_POST_ATTENTION = re.compile(r"^(?:model\.)?layers\.(\d+)\.post_attention_layernorm\.weight$")


def canonical_from_hf(hf_name: str, post_attention_on_output: bool = False) -> str | None:
    """The canonical name of a HuggingFace tensor, or None for tensors Kiln does not use.
    `post_attention_on_output` (Gemma 2, 3, OLMo 2): post_attention_layernorm normalizes the
    attention's output, not the MLP's input."""
    hf_name = unwrapped(hf_name)
    if post_attention_on_output and (match := _POST_ATTENTION.match(hf_name)):
        return f"layers.{match.group(1)}.attn_out_norm.weight"
    for pattern, template in _HF_PATTERNS:
        match = pattern.match(hf_name)
        if match:
            return template.format(*match.groups())
    return None


def gguf_expert_parts(gguf_name: str, experts: int) -> list[tuple[str, int | None]] | None:
    """[(canonical name, index in the stacked tensor or None)] of a llama.cpp experts tensor
    (a layer's `experts` stacked, or one expert's), or None for other tensors."""
    match = _GGUF_EXPERTS.match(gguf_name)
    if not match:
        return None
    layer, part, one = match.groups()
    if one is not None:
        return [(f"layers.{layer}.experts.{one}.{part}.weight", None)]
    return [(f"layers.{layer}.experts.{e}.{part}.weight", e) for e in range(experts)]


def canonical_from_gguf(gguf_name: str) -> str | None:
    """The canonical name of a llama.cpp tensor, or None for tensors Kiln does not use."""
    if gguf_name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[gguf_name]
    match = _GGUF_BLOCK.match(gguf_name)
    if match and match.group(2) in _GGUF_LAYER:
        return f"layers.{match.group(1)}.{_GGUF_LAYER[match.group(2)]}.{match.group(3)}"
    return None


def required_names(num_layers: int, tie_word_embeddings: bool,
                   absent: tuple[str, ...] = ()) -> list[str]:
    """The canonical tensors a llama-family checkpoint cannot do without; `absent`: layer parts
    the family has not (OLMo 2 no input norms, Cohere no MLP input norm)."""
    names = ["embed.weight", "final_norm.weight"]
    if not tie_word_embeddings:
        names.append("lm_head.weight")
    parts = [p for p in _LAYER_REQUIRED if p not in absent]
    for i in range(num_layers):
        names.extend(f"layers.{i}.{part}.weight" for part in parts)
    return names


def sort_key(name: str) -> tuple[int, int, str]:
    """Order names as a model reads them: embedding, layers by index, then the head."""
    parts = name.split(".")
    if parts[0] == "layers":
        return (1, int(parts[1]), ".".join(parts[2:]))
    return (0 if parts[0] == "embed" else 2, 0, name)
