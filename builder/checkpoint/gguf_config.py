"""Rebuilding a HuggingFace config.json dict from GGUF metadata (llama.cpp key names)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kiln.builder.errors import KilnError

# GGUF architecture -> (HF class, HF model_type). llama.cpp also writes Mistral as "llama", and
# Mixtral as "llama" with an expert count (MIXTRAL).
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
}
MIXTRAL = ("MixtralForCausalLM", "mixtral")
# Whether llama.cpp renormalizes the top-k routing weights of an architecture's experts when
# its file does not say (expert_weights_norm): as its graphs do.
_EXPERT_WEIGHTS_NORM = {"llama": True, "qwen2moe": False, "qwen3moe": True}


def build_hf_config(path: Path, metadata: dict[str, object], tensor_names: set[str],
                    tensor_shapes: dict[str, tuple[int, ...]], rope_freqs: np.ndarray | None) -> dict:
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise KilnError(f"{path} holds a {arch!r} model; Kiln reads GGUF architectures "
                        f"{', '.join(ARCHITECTURES)}: use the HuggingFace checkpoint instead")

    def get(key: str, default: object = None, required: bool = False) -> object:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None and required:
            raise KilnError(f"{path} lacks GGUF metadata {arch}.{key}; re-download the file or "
                            "convert the model again with llama.cpp's convert_hf_to_gguf.py")
        return value

    if "token_embd.weight" not in tensor_shapes:
        raise KilnError(f"{path} has no token_embd.weight tensor; re-download the file")
    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    kv_heads = get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer list in some files; Kiln needs one value
        if len(set(kv_heads)) != 1:
            raise KilnError(f"{path} has a different KV head count per layer; Kiln needs one "
                            "count for all layers")
        kv_heads = kv_heads[0]
    head_dim = int(get("attention.key_length", hidden // heads))
    rotary = int(get("rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise KilnError(f"{path} applies RoPE to {rotary} of {head_dim} head dims; Kiln supports "
                        "full-head RoPE only")
    theta = float(get("rope.freq_base", 10000.0))
    context = int(get("context_length", required=True))
    experts = int(get("expert_count", 0))
    if experts and arch not in _EXPERT_WEIGHTS_NORM:
        raise KilnError(f"{path} holds a {arch!r} mixture of experts ({experts} experts), which "
                        "Kiln does not read from GGUF; build from the HuggingFace checkpoint "
                        "instead")
    if arch.endswith("moe") and not experts:
        raise KilnError(f"{path} lacks GGUF metadata {arch}.expert_count; re-download the file "
                        "or convert the model again with llama.cpp's convert_hf_to_gguf.py")
    hf_class, model_type = MIXTRAL if experts and arch == "llama" else ARCHITECTURES[arch]
    config: dict = {
        "architectures": [hf_class],
        "model_type": model_type,
        "vocab_size": int(tensor_shapes["token_embd.weight"][0]),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(path, get, rope_freqs, theta, head_dim),
        "max_position_embeddings": context,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "hidden_act": "silu",
    }
    if experts:
        ffn = config["intermediate_size"]
        config |= {"num_experts": experts,
                   "num_experts_per_tok": int(get("expert_used_count", required=True)),
                   "moe_intermediate_size": int(get("expert_feed_forward_length", ffn)),
                   "norm_topk_prob": bool(get("expert_weights_norm", _EXPERT_WEIGHTS_NORM[arch])),
                   "shared_expert_intermediate_size":
                       int(get("expert_shared_feed_forward_length", 0))}
    for key in ("bos", "eos", "padding"):
        value = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(value)
    return config


def _rope_scaling(path: Path, get, rope_freqs: np.ndarray | None, theta: float,
                  head_dim: int) -> dict | None:
    kind = get("rope.scaling.type")
    if rope_freqs is not None:
        return _llama3_from_factors(path, rope_freqs, theta, head_dim)
    if kind in (None, "none"):
        return None
    factor = float(get("rope.scaling.factor", 1.0))
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        return {"rope_type": "yarn", "factor": factor,
                "original_max_position_embeddings": int(get("rope.scaling.original_context_length"))}
    raise KilnError(f"{path} uses RoPE scaling {kind!r}, which Kiln does not read from GGUF; "
                    "build from the HuggingFace checkpoint instead")


def _llama3_factors(theta: float, head_dim: int, factor: float, low: float, high: float,
                    old_context: float) -> np.ndarray:
    """Per-frequency divisors of Llama 3 RoPE, as llama.cpp stores them in rope_freqs.weight."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old_context / high, 1.0,
                    np.where(wavelen > old_context / low, factor, mid))


def _llama3_from_factors(path: Path, stored: np.ndarray, theta: float, head_dim: int) -> dict:
    """Recover HF llama3 rope_scaling from llama.cpp's rope_freqs tensor.

    The factors depend on (old_context, low, high) only through old/(high-low) and
    low/(high-low), so the smooth band fixes those two; old_context 8192 (Llama 3's value and
    llama.cpp's default) then fixes low and high. The result is checked by recomputing.
    """
    stored = np.asarray(stored, dtype=np.float64).reshape(-1)
    factor = float(stored.max())
    candidates = [(1.0, 4.0, 8192.0)]
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    band = (stored > 1.0 + 1e-6) & (stored < factor - 1e-6)
    if factor > 1.0 and band.sum() >= 2 and stored.size == freqs.size:
        smooth = (1.0 / stored[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
        slope, offset = np.polyfit(freqs[band] / (2 * math.pi), smooth, 1)  # s = a/wavelen - b
        if slope > 0 and -offset > 0:
            span = 8192.0 / slope
            low = -offset * span
            candidates.insert(0, (low, low + span, 8192.0))
    for low, high, old in candidates:
        if stored.size == freqs.size and np.allclose(
                _llama3_factors(theta, head_dim, factor, low, high, old), stored, rtol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": round(low, 6),
                    "high_freq_factor": round(high, 6), "original_max_position_embeddings": int(old)}
    raise KilnError(f"{path} has per-frequency RoPE factors (rope_freqs) that match no Llama 3 "
                    "RoPE scaling; build from the HuggingFace checkpoint instead")
