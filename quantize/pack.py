"""The quantized number formats of an engine: how values are rounded, scaled and packed.

Weights are quantized here once, at build time; activations and the KV cache are quantized at
run time by the ops in kiln.builder.ops.quant, with the same functions. A scale is always the
dequantization factor (real value = stored value * scale); quantizing multiplies by its
float32 reciprocal, as the GPU kernels do.

Layouts (docs/architecture.md, "Quantized ops"):
  fp8    float8_e4m3fn [N, K], saturated to +-448
  int8   int8 [N, K], symmetric, [-128, 127]
  int4   uint8 [N, K // 2]: element k of a row is nibble k % 2 of byte k // 2 (low nibble
         first); nibbles are unsigned 0..15 and mean (u - zero) * scale, zero = 8 unless the
         weight has explicit zero points
"""
from __future__ import annotations

import torch

FP8_MAX = 448.0
INT8_MIN, INT8_MAX = -128, 127
INT4_MAX = 7          # symmetric int4 spans [-8, 7]; scale = amax / 7
INT4_SYMMETRIC_ZERO = 8
TINY_AMAX = 2.0 ** -24  # below this a tensor counts as all zeros (as in modelopt)


def scale_from_amax(amax: torch.Tensor, bound: float) -> torch.Tensor:
    """The dequantization scale that maps +-amax onto +-bound (1/bound for all-zero ranges)."""
    amax = amax.float()
    return torch.where(amax > TINY_AMAX, amax, torch.ones_like(amax)) / bound


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn(x / scale), rounded to nearest even and saturated at +-448."""
    y = x.float() * torch.reciprocal(scale.float().to(x.device))
    return y.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def to_int(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """round(x / scale) clamped to [lo, hi], as float32 integers (round half to even)."""
    return torch.round(x.float() * torch.reciprocal(scale.float().to(x.device))).clamp(lo, hi)


def per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token int8: (q int8 [T, K], scale float32 [T]) with scale = amax_t / 127.

    Rounds x * (127 / amax_t), the factor a kernel computes once per row."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    safe = torch.where(amax > TINY_AMAX, amax, torch.ones_like(amax))
    q = torch.round(xf * (INT8_MAX / safe)[..., None]).clamp(INT8_MIN, INT8_MAX)
    q = torch.where((amax > TINY_AMAX)[..., None], q, torch.zeros_like(q))
    return q.to(torch.int8), safe / INT8_MAX


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] of values 0..15 -> uint8 [N, K // 2], low nibble = even k."""
    if u.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {u.shape[-1]}")
    u = u.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> uint8 [N, K] of values 0..15."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _per_group(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K // G] -> [N, K]: each group's value repeated over its columns."""
    return t.repeat_interleave(group_size, dim=-1)


def quantize_weight(w: torch.Tensor, bits: int, scales: torch.Tensor, group_size: int,
                    zeros: torch.Tensor | None = None) -> torch.Tensor:
    """A float weight [N, K] -> int8 [N, K] (bits 8) or packed uint8 [N, K // 2] (bits 4).

    scales (and zeros) are [N, K // group_size]; per-channel int8 is group_size == K."""
    n, k = w.shape
    if k % group_size or scales.shape != (n, k // group_size):
        raise ValueError(f"scales {tuple(scales.shape)} do not fit weight {(n, k)} in groups "
                         f"of {group_size}")
    s = _per_group(scales.float().to(w.device), group_size)
    if bits == 8:
        if zeros is not None:
            raise ValueError("int8 weights are symmetric: no zero points")
        return to_int(w, s, INT8_MIN, INT8_MAX).to(torch.int8)
    if bits != 4:
        raise ValueError(f"{bits}-bit weights are not supported; use 4 or 8")
    if zeros is None:
        u = to_int(w, s, -INT4_SYMMETRIC_ZERO, INT4_MAX) + INT4_SYMMETRIC_ZERO
    else:
        zero = _per_group(zeros.float().to(w.device), group_size)
        u = (to_int(w, s, -15, 15) + zero).clamp(0, 15)
    return pack_int4(u)


def dequantize_weight(q: torch.Tensor, bits: int, scales: torch.Tensor, group_size: int,
                      zeros: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weight [N, K] a quantized weight stands for: (q - zero) * scale.

    (q - zero) is a small integer, so the product is exact in float32 and equals what a
    kernel computes in the scales' dtype."""
    if bits == 8:
        values = q.float()
    else:
        u = unpack_int4(q).float()
        zero = INT4_SYMMETRIC_ZERO if zeros is None else _per_group(zeros.float(), group_size)
        values = u - zero
    return values * _per_group(scales.float(), group_size)
