"""Rotary position embedding (rotate-half form, as HuggingFace's Llama), with rope scaling."""
from __future__ import annotations

import math

import torch

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """The per-pair frequencies, computed exactly as transformers does (float32)."""
    freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return freq
    if kind == "linear":
        return freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope_type {kind!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")


def cos_sin(positions: torch.Tensor, attrs: dict, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freq = inv_freq(attrs["head_dim"], attrs["theta"], attrs.get("scaling"))
    angles = positions.float()[:, None] * freq.to(positions.device)[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, attrs: dict) -> torch.Tensor:
    """x: [T, heads*head_dim] -> same, each head rotated by its token's position."""
    hd = attrs["head_dim"]
    heads = x.reshape(x.shape[0], -1, hd)
    cos, sin = cos_sin(positions, attrs, x.dtype)
    cos, sin = cos[:, None, :], sin[:, None, :]
    first, second = heads[..., : hd // 2], heads[..., hd // 2:]
    rotated = torch.cat((-second, first), dim=-1)
    return (heads * cos + rotated * sin).reshape(x.shape)


def _rope_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    expect(of(graph, node.inputs[1]) == ("int32", (shape[0],)), node, "positions must be int32 [T]")
    expect(shape[-1] % node.attrs["head_dim"] == 0, node, "width is not a multiple of head_dim")
    return [(dtype, shape)]


register("rope", _rope_infer, lambda node, x, ctx: [apply_rope(x[0], x[1], node.attrs)])
