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


def test_int4_zero_points():
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3, 1.5, -1.5, 0.05, 0.0]])
    scales = torch.tensor([[0.1, 0.2]])
    zeros = torch.tensor([[2, 7]], dtype=torch.uint8)
    q = pack.quantize_weight(w, 4, scales, 4, zeros)
    assert pack.unpack_int4(q).tolist() == [[2, 3, 4, 5, 15, 0, 7, 7]]  # 1.5/.2=7.5->8+7 clamps
    assert torch.allclose(pack.dequantize_weight(q, 4, scales, 4, zeros),
                          torch.tensor([[0.0, 0.1, 0.2, 0.3, 1.6, -1.4, 0.0, 0.0]]))


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
