"""Rotary position embedding (rotate-half form, as HuggingFace's Llama), with rope scaling.

A model that rotates only the first `rotary_dim` dims of a head (a partial_rotary_factor below
1), or pairs interleaved dims (GLM), is built with its q and k head dims permuted
(`rotary_permutation`): the rotated pairs (i, i + rotary_dim / 2), or (2i, 2i + 1), become
(i, i + head_dim / 2) and the dims left alone fill the other pairs, whose frequency is 0 (cos 1,
sin 0: unchanged). Attention's q . k is a sum over a head's
dims in any order, so the permutation changes nothing else, and every kernel rotates whole
heads."""
from __future__ import annotations

import math

import torch

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope", "yarn")


def inv_freq(head_dim: int, theta: float, scaling: dict | None,
             rotary_dim: int | None = None) -> torch.Tensor:
    """The head_dim / 2 per-pair frequencies, computed exactly as transformers does (float32):
    those of the first rotary_dim dims, then zeros for the pairs left unrotated."""
    dim = rotary_dim or head_dim
    freq = _rotary_freq(dim, theta, scaling)
    return torch.cat((freq, torch.zeros(head_dim // 2 - dim // 2))) if dim < head_dim else freq


def _rotary_freq(dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "longrope":  # the factors set chosen for the engine (ModelConfig.rope_attrs)
        return 1.0 / (torch.tensor(scaling["factors"], dtype=torch.float32) * theta ** shape)
    freq = 1.0 / (theta ** shape)
    if kind == "default":
        return freq
    if kind == "yarn":
        return _yarn(theta ** shape, dim, theta, scaling)
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


def _yarn(pos: torch.Tensor, dim: int, theta: float, scaling: dict) -> torch.Tensor:
    """YaRN's frequencies, as transformers computes them: the slow ones interpolated by
    `factor`, the fast ones kept, a linear ramp between (beta_fast, beta_slow rotations over
    original_max_position_embeddings)."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    fast, slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(fast), correction_dim(slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # the share of each frequency left as it is
    return 1.0 / (factor * pos) * (1 - keep) + 1.0 / pos * keep


def inv_freq_of(attrs: dict) -> torch.Tensor:
    """inv_freq of a rope op's (or a kernel's rope) attrs."""
    return inv_freq(attrs["head_dim"], attrs["theta"], attrs.get("scaling"), attrs.get("rotary_dim"))


def rotary_permutation(head_dim: int, rotary_dim: int, interleaved: bool = False) -> torch.Tensor:
    """The order of a head's dims in the engine: new dim j holds HF's dim perm[j]. The rotated
    pairs, (i, i + rotary_dim / 2) or with `interleaved` (GLM's) (2i, 2i + 1), land on
    (i, i + head_dim / 2); the dims left alone fill the pairs after."""
    r, h = rotary_dim // 2, head_dim // 2
    rest = torch.arange(rotary_dim, head_dim)
    first, second = ((torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2)) if interleaved
                     else (torch.arange(r), torch.arange(r, rotary_dim)))
    return torch.cat((first, rest[: h - r], second, rest[h - r:]))


def cos_sin(positions: torch.Tensor, attrs: dict, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freq = inv_freq_of(attrs)
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
