"""Number formats: rounding, saturation and int4 packing, with exact values."""
from __future__ import annotations

import torch

from kiln.quantize import pack


def test_int4_packing_layout():
    u = torch.tensor([[1, 2, 3, 4, 15, 0], [8, 9, 10, 11, 12, 13]], dtype=torch.uint8)
    packed = pack.pack_int4(u)
    # element 2j in the low nibble, 2j+1 in the high nibble of byte j
    assert packed.tolist() == [[0x21, 0x43, 0x0F], [0x98, 0xBA, 0xDC]]
    assert torch.equal(pack.unpack_int4(packed), u)


def test_int4_symmetric_weight_round_trip():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 64, generator=g)
    scales = w.reshape(6, 2, 32).abs().amax(-1) / 7
    q = pack.quantize_weight(w, 4, scales, 32)
    assert q.dtype == torch.uint8 and q.shape == (6, 32)
    values = pack.unpack_int4(q).float() - 8
    assert values.min() >= -8 and values.max() <= 7
    expected = torch.round(w / scales.repeat_interleave(32, 1)).clamp(-8, 7)
    assert torch.equal(values, expected)
    assert torch.equal(pack.dequantize_weight(q, 4, scales, 32),
                       expected * scales.repeat_interleave(32, 1))
    # quantizing what a weight dequantizes to gives back the same nibbles
    again = pack.quantize_weight(pack.dequantize_weight(q, 4, scales, 32), 4, scales, 32)
    assert torch.equal(again, q)


def test_int4_offsets():
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3, 1.5, -1.5, 0.05, 0.0]])
    scales = torch.tensor([[0.1, 0.2]])
    offsets = torch.tensor([[0.6, -0.2]])  # (8 - zero) * scale of zeros 2 and 9
    q = pack.quantize_weight(w, 4, scales, 4, offsets)
    # round((w - offset) / scale) + 8: 1.7 / .2 = 8.5 rounds to even, 16 clamps to 15;
    # -1.3 / .2 = -6.5 rounds to even; .25 / .2 = 1.25 rounds to 1
    assert pack.unpack_int4(q).tolist() == [[2, 3, 4, 5, 15, 2, 9, 9]]
    assert torch.allclose(pack.dequantize_weight(q, 4, scales, 4, offsets),
                          torch.tensor([[0.0, 0.1, 0.2, 0.3, 1.2, -1.4, 0.0, 0.0]]), atol=1e-7)


def test_offsets_from_integer_zeros():
    zeros = torch.tensor([[0, 8, 15]], dtype=torch.uint8)
    scales = torch.tensor([[0.5, 0.25, 0.125]])
    assert pack.offsets_from_zeros(zeros, scales).tolist() == [[4.0, 0.0, -0.875]]
    u = torch.tensor([[3, 11, 0, 15, 7, 14]], dtype=torch.uint8)
    q = pack.pack_int4(u)
    # (u - zero) * scale == (u - 8) * scale + (8 - zero) * scale
    by_zeros = (u.float() - zeros.float().repeat_interleave(2, 1)) * scales.repeat_interleave(2, 1)
    offsets = pack.offsets_from_zeros(zeros, scales)
    assert torch.equal(pack.dequantize_weight(q, 4, scales, 2, offsets), by_zeros)


def q4_1_weight(seed: int, rows: int, k: int, dtype=torch.float16):
    """A weight on GGUF Q4_1's grid: per group of 32, d * q + m with q in 0..15 (0 and 15 in
    every group), d and m 16-bit floats, as the bundled SmolLM2 stores it."""
    g = torch.Generator().manual_seed(seed)
    groups = k // 32
    d = (torch.rand(rows, groups, generator=g) * 0.01 + 0.001).to(dtype).float()
    m = (-8 * d * (torch.rand(rows, groups, generator=g) + 0.5)).to(dtype).float()
    q = torch.randint(0, 16, (rows, groups, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    w = d[..., None] * q + m[..., None]
    return w.reshape(rows, k), d, m, q.reshape(rows, k)


def test_int4_min_max_gives_back_a_q4_1_weight():
    """Groups of 32 from each group's minimum to its maximum are Q4_1's own: the nibbles are
    its codes, and in float32 the weight comes back exactly."""
    w, d, m, q = q4_1_weight(0, 8, 128)
    scales, offsets = pack.int4_min_max(w, 32)
    assert torch.equal(scales, d) and torch.equal(offsets, m + 8 * d)
    packed = pack.quantize_weight(w, 4, scales, 32, offsets)
    assert torch.equal(pack.unpack_int4(packed).long(), q)
    assert torch.equal(pack.dequantize_weight(packed, 4, scales, 32, offsets), w)


def test_int4_min_max_in_bfloat16_is_within_the_rounding_of_d_and_m():
    """Stored in bfloat16 (a bfloat16 engine's scales and offsets), d and m + 8d round once;
    the nibbles are still Q4_1's codes and each weight is off by no more than that rounding:
    |u - 8| times d's rounding plus the offset's."""
    w, d, m, q = q4_1_weight(1, 16, 256)
    scales, offsets = (t.to(torch.bfloat16).float() for t in pack.int4_min_max(w, 32))
    packed = pack.quantize_weight(w, 4, scales, 32, offsets)
    assert torch.equal(pack.unpack_int4(packed).long(), q)
    err = (pack.dequantize_weight(packed, 4, scales, 32, offsets) - w).abs()
    bound = (8 * (scales - d).abs() + (offsets - (m + 8 * d)).abs()).repeat_interleave(32, 1)
    assert bool((err <= bound * (1 + 1e-6)).all())
    assert err.max() <= 2 ** -8 * w.abs().max()  # what rounding w itself to bfloat16 could cost


def test_int4_min_max_of_a_constant_group():
    w = torch.cat([torch.full((1, 4), 0.3), torch.tensor([[0.0, 1.5, 0.5, 0.7]])], dim=1)
    scales, offsets = pack.int4_min_max(w, 4)
    assert torch.equal(scales, torch.tensor([[1 / 15, 0.1]]))
    packed = pack.quantize_weight(w, 4, scales, 4, offsets)
    assert pack.unpack_int4(packed).tolist() == [[0, 0, 0, 0, 0, 15, 5, 7]]
    assert torch.allclose(pack.dequantize_weight(packed, 4, scales, 4, offsets), w, atol=1e-6)


def test_int8_per_channel():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.01, 0.02, -0.03]])
    scales = torch.tensor([[2 / 127], [0.03 / 127]])
    q = pack.quantize_weight(w, 8, scales, 3)
    assert q.dtype == torch.int8
    assert q.tolist() == [[64, -127, 32], [42, 85, -127]]


def test_fp8_rounds_to_nearest_even_and_saturates():
    scale = torch.tensor([0.5])
    x = torch.tensor([1.0, 300.0, -1000.0, 0.0, 0.5625])
    q = pack.to_fp8(x, scale)
    assert q.dtype == torch.float8_e4m3fn
    # x / 0.5: 2; 600 and -2000 saturate at +-448; 1.125 is exact in e4m3
    assert q.float().tolist() == [2.0, 448.0, -448.0, 0.0, 1.125]
    assert pack.to_fp8(torch.tensor([600.0]), torch.tensor([1.0])).float().item() == 448.0
    assert pack.to_fp8(torch.tensor([432.0]), torch.tensor([1.0])).float().item() == 448.0
    assert pack.to_fp8(torch.tensor([17.0]), torch.tensor([1.0])).float().item() == 16.0  # tie: even


def test_per_token_int8():
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-3.0, 1.5, 0.7]])
    q, scale = pack.per_token_int8(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.tolist() == [[127, -64, 32], [0, 0, 0], [-127, 64, 30]]
    assert torch.allclose(scale, torch.tensor([1 / 127, 1 / 127, 3 / 127]))


def test_scale_from_amax_guards_zero():
    s = pack.scale_from_amax(torch.tensor([448.0, 0.0]), pack.FP8_MAX)
    assert torch.equal(s, torch.tensor([1.0, 1.0]) / torch.tensor([1.0, 448.0]))
