"""The quantized number formats of an engine: how values are rounded, scaled and packed.

Weights are quantized here once, at build time; activations and the KV cache are quantized at
run time by the ops in kiln.builder.ops.quant, with the same functions. A scale is always the
dequantization factor (real value = stored value * scale); quantizing multiplies by its
float32 reciprocal, as the GPU kernels do.

Layouts (docs/architecture.md, "Quantized ops"):
  fp8    float8_e4m3fn [N, K], saturated to +-448
  int8   int8 [N, K], symmetric, [-128, 127]
  int4   uint8 [N, K // 2]: element k of a row is nibble k % 2 of byte k // 2 (low nibble
         first); nibbles are unsigned 0..15 and mean (u - 8) * scale + offset, with a float
         offset per group where the weight is asymmetric (TensorRT-LLM's W4A16 "scales and
         zeros"), none (0) where it is symmetric
"""
from __future__ import annotations

import torch

FP8_MAX = 448.0
INT8_MIN, INT8_MAX = -128, 127
INT4_MAX = 7          # symmetric int4 spans [-8, 7]; scale = amax / 7
INT4_SYMMETRIC_ZERO = 8
INT4_LEVELS = 15      # asymmetric int4: scale = (max - min) / 15
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


def int4_min_max(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 groups spanning each group's minimum to its maximum (GGUF's Q4_1):
    (scales, offsets), float32 [N, K // G], with scale = (max - min) / 15 and offset =
    min + 8 * scale, so that nibble 0 means the minimum and 15 the maximum. A constant group
    gets scale 1 / 15 and is its offset (up to where 8 * scale rounds)."""
    n, k = w.shape
    grouped = w.float().reshape(n, k // group_size, group_size)
    lo, hi = grouped.amin(-1), grouped.amax(-1)
    span = hi - lo
    scales = torch.where(span > TINY_AMAX, span, torch.ones_like(span)) / INT4_LEVELS
    return scales, lo + INT4_SYMMETRIC_ZERO * scales


def offsets_from_zeros(zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float offsets of integer zero points (AutoAWQ, GPTQ: w = (u - zero) * scale):
    (8 - zero) * scale, exact in float32."""
    return (INT4_SYMMETRIC_ZERO - zeros.float()) * scales.float()


def quantize_weight(w: torch.Tensor, bits: int, scales: torch.Tensor, group_size: int,
                    offsets: torch.Tensor | None = None) -> torch.Tensor:
    """A float weight [N, K] -> int8 [N, K] (bits 8) or packed uint8 [N, K // 2] (bits 4).

    scales (and int4 offsets) are [N, K // group_size]; per-channel int8 is group_size == K.
    u = round((w - offset) / scale) + 8, clamped to 0..15 (offset 0 without offsets)."""
    n, k = w.shape
    if k % group_size or scales.shape != (n, k // group_size):
        raise ValueError(f"scales {tuple(scales.shape)} do not fit weight {(n, k)} in groups "
                         f"of {group_size}")
    s = _per_group(scales.float().to(w.device), group_size)
    if bits == 8:
        if offsets is not None:
            raise ValueError("int8 weights are symmetric: no offsets")
        return to_int(w, s, INT8_MIN, INT8_MAX).to(torch.int8)
    if bits != 4:
        raise ValueError(f"{bits}-bit weights are not supported; use 4 or 8")
    if offsets is not None:
        if offsets.shape != scales.shape:
            raise ValueError(f"offsets {tuple(offsets.shape)} do not match scales "
                             f"{tuple(scales.shape)}")
        w = w.float() - _per_group(offsets.float().to(w.device), group_size)
    u = to_int(w, s, -INT4_SYMMETRIC_ZERO, INT4_MAX) + INT4_SYMMETRIC_ZERO
    return pack_int4(u)


def dequantize_weight(q: torch.Tensor, bits: int, scales: torch.Tensor, group_size: int,
                      offsets: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weight [N, K] a quantized weight stands for: (u - 8) * scale (+ offset).

    With scales of a 16-bit dtype (u - 8) * scale is exact in float32 and equals what a kernel
    computes. The offset is added as a fused multiply-add rounds it, once to float32 (the sum
    is computed in float64, where it is exact), as the kernels do with fma."""
    s = _per_group(scales.float(), group_size)
    if bits == 8:
        return q.float() * s
    values = unpack_int4(q).float() - INT4_SYMMETRIC_ZERO
    if offsets is None:
        return values * s
    return (values.double() * s.double() + _per_group(offsets.double(), group_size)).float()
