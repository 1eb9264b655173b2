"""Quantized ops: activation quantization, quantized GEMMs, and norms fused with quantization.

Each reference is the exact math its GPU kernel implements (docs/architecture.md, "Quantized
ops"); number formats and packing are kiln.quantize.pack's. Scales are dequantization factors.

  quantize_fp8      x, scale[1]                          -> q fp8                 (static)
  quantize_int8     x, (smoother[K])                     -> q int8, row_scale[T]  (per token)
  linear_fp8        q, w fp8[N,K], x_scale[1], w_scale[1], (bias), (residual) -> [T,N] dtype
  linear_w8a8       q, row_scale[T], w int8[N,K], w_scale[N], (bias)       -> [T,N] dtype
  linear_wo         x, w, scales[N,K/G], (offsets[N,K/G]), (pre_quant_scale[K]), (bias) -> [T,N]
  rmsnorm_quant     x, w, (scale)            -> q (fp8) | q, row_scale (int8)
  add_rmsnorm_quant x, residual, w, (scale)  -> q, sum | q, row_scale, sum
  silu_mul_quant    x[T,2I], (scale | smoother) -> q | q, row_scale
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.builder.ir import torch_dtype
from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of
from kiln.builder.ops.linear import expect_residual, operands
from kiln.builder.ops.norm import rms_norm
from kiln.quantize import pack

FP8 = "float8_e4m3fn"
QDTYPES = (FP8, "int8")


# -- activation quantization: shared by the standalone and the fused ops ---------------------
def quantize_activation(y: torch.Tensor, qdtype: str, scale_or_smoother: torch.Tensor | None):
    """fp8: [q] with a static per-tensor scale; int8: [q, row_scale], dynamic per token, after
    multiplying by the optional per-channel smoother in float32."""
    if qdtype == FP8:
        return [pack.to_fp8(y, scale_or_smoother)]
    if scale_or_smoother is not None:
        y = y.float() * scale_or_smoother.float()
    return list(pack.per_token_int8(y))


def _quant_outputs(node, shape):
    qdtype = node.attrs["qdtype"]
    expect(qdtype in QDTYPES, node, f"qdtype {qdtype!r} not in {QDTYPES}")
    if qdtype == FP8:
        return [(FP8, shape)]
    return [("int8", shape), ("float32", shape[:-1])]


def _expect_scalar(node, graph, index: int, what: str) -> None:
    expect(len(node.inputs) > index and of(graph, node.inputs[index]) == ("float32", (1,)), node,
           f"{what} must be a float32 [1]")


def _expect_vector(node, graph, index: int, width, what: str) -> None:
    expect(of(graph, node.inputs[index]) == ("float32", (width,)), node,
           f"{what} must be float32 [{width}]")


def _quantize_fp8_infer(node, graph):
    _expect_scalar(node, graph, 1, "scale")
    return [(FP8, of(graph, node.inputs[0])[1])]


def _quantize_int8_infer(node, graph):
    _, shape = of(graph, node.inputs[0])
    if len(node.inputs) == 2:
        _expect_vector(node, graph, 1, shape[-1], "smoother")
    return [("int8", shape), ("float32", shape[:-1])]


# -- GEMMs -------------------------------------------------------------------------------------
def _gemm_out(node, graph, x_shape, n):
    return [(node.attrs["dtype"], (*x_shape[:-1], n))]


def _expect_bias(node, graph, index: int, n) -> None:
    if len(node.inputs) > index:
        expect(of(graph, node.inputs[index])[1] == (n,), node, "bias does not match the weight")


def _linear_fp8_infer(node, graph):
    xd, xs = of(graph, node.inputs[0])
    wd, ws = of(graph, node.inputs[1])
    expect(xd == wd == FP8 and len(ws) == 2 and ws[1] == xs[-1], node,
           f"needs fp8 x [.., K] and fp8 w [N, K]; got {xd}{list(xs)} and {wd}{list(ws)}")
    _expect_scalar(node, graph, 2, "x_scale")
    _expect_scalar(node, graph, 3, "w_scale")
    if len(operands(node, node.inputs)) == 5:
        _expect_bias(node, graph, 4, ws[0])
    out = _gemm_out(node, graph, xs, ws[0])
    expect_residual(node, graph, out[0])
    return out


def _linear_fp8(node, inputs, ctx):
    """(x @ w.T) * (x_scale * w_scale) (+ bias), rounded to dtype; with `residual`, then plus the
    residual (its last input), rounded again (ops/linear.py)."""
    q, w, x_scale, w_scale, *bias = operands(node, inputs)
    acc = q.float() @ w.float().T
    y = acc * (x_scale.float() * w_scale.float())
    if bias:
        y = y + bias[0].float()
    y = y.to(torch_dtype(node.attrs["dtype"]))
    return [y + inputs[-1] if node.attrs.get("residual") else y]


def _linear_w8a8_infer(node, graph):
    xd, xs = of(graph, node.inputs[0])
    wd, ws = of(graph, node.inputs[2])
    expect(xd == wd == "int8" and len(ws) == 2 and ws[1] == xs[-1], node,
           f"needs int8 x [.., K] and int8 w [N, K]; got {xd}{list(xs)} and {wd}{list(ws)}")
    expect(of(graph, node.inputs[1]) == ("float32", tuple(xs[:-1])), node,
           "row_scale must be float32 with one value per token")
    _expect_vector(node, graph, 3, ws[0], "w_scale")
    _expect_bias(node, graph, 4, ws[0])
    return _gemm_out(node, graph, xs, ws[0])


def _linear_w8a8(node, inputs, ctx):
    q, row_scale, w, w_scale = inputs[:4]
    # int32 accumulation is exact; float64 holds every such sum exactly, and rounding it to
    # float32 is what converting the int32 accumulator does.
    acc = (q.double() @ w.double().T).float()
    y = acc * row_scale.float()[:, None] * w_scale.float()[None, :]
    if len(inputs) == 5:
        y = y + inputs[4].float()
    return [y.to(torch_dtype(node.attrs["dtype"]))]


def _wo_operands(node) -> dict[str, int]:
    """Positions of linear_wo's inputs: x, weight, scales, then the optional ones in order."""
    names = ["x", "weight", "scales"] + [name for attr, name in (
        ("offset", "offsets"), ("pre_quant_scale", "pre_quant_scale"), ("bias", "bias"))
        if node.attrs.get(attr)]
    expect(len(names) == len(node.inputs), node, f"expects inputs {names}")
    return {name: i for i, name in enumerate(names)}


def _linear_wo_infer(node, graph):
    at, a = _wo_operands(node), node.attrs
    xd, xs = of(graph, node.inputs[0])
    wd, ws = of(graph, node.inputs[1])
    bits, group = a["bits"], a["group_size"]
    k = xs[-1]
    n = ws[0]
    expect(bits in (4, 8) and k % group == 0, node, f"bits {bits} / group_size {group} for K={k}")
    want = ("uint8", (n, k // 2)) if bits == 4 else ("int8", (n, k))
    expect((wd, ws) == want, node, f"weight must be {want[0]}{list(want[1])}, got {wd}{list(ws)}")
    expect(of(graph, node.inputs[2]) == (xd, (n, k // group)), node,
           f"scales must be {xd} [{n}, {k // group}]")
    if "offsets" in at:
        expect(bits == 4 and of(graph, node.inputs[at["offsets"]]) == (xd, (n, k // group)),
               node, f"offsets must be {xd} [{n}, {k // group}] of an int4 weight")
    if "pre_quant_scale" in at:
        _expect_vector(node, graph, at["pre_quant_scale"], k, "pre_quant_scale")
    if "bias" in at:
        _expect_bias(node, graph, at["bias"], n)
    return [(xd, (*xs[:-1], n))]


def _linear_wo(node, inputs, ctx):
    at, a = _wo_operands(node), node.attrs
    x = inputs[0]
    offsets = inputs[at["offsets"]] if "offsets" in at else None
    w = pack.dequantize_weight(inputs[1], a["bits"], inputs[2], a["group_size"], offsets)
    if "pre_quant_scale" in at:
        x = (x.float() * inputs[at["pre_quant_scale"]].float()).to(x.dtype)
    bias = inputs[at["bias"]] if "bias" in at else None
    return [F.linear(x, w.to(x.dtype), bias)]


# -- norms and SiLU-mul fused with the quantization of their output --------------------------
def _rmsnorm_quant_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    expect(of(graph, node.inputs[1])[1] == (shape[-1],), node, "weight does not match width")
    if node.attrs["qdtype"] == FP8:
        _expect_scalar(node, graph, 2, "scale")
    return _quant_outputs(node, shape)


def _rmsnorm_quant(node, inputs, ctx):
    y = rms_norm(inputs[0], inputs[1], node.attrs["eps"])
    return quantize_activation(y, node.attrs["qdtype"], inputs[2] if len(inputs) == 3 else None)


def _add_rmsnorm_quant_infer(node, graph):
    x, res = of(graph, node.inputs[0]), of(graph, node.inputs[1])
    expect(x == res, node, f"x {x} and residual {res} differ")
    expect(of(graph, node.inputs[2])[1] == (x[1][-1],), node, "weight does not match width")
    if node.attrs["qdtype"] == FP8:
        _expect_scalar(node, graph, 3, "scale")
    return _quant_outputs(node, x[1]) + [x]


def _add_rmsnorm_quant(node, inputs, ctx):
    total = inputs[0] + inputs[1]
    y = rms_norm(total, inputs[2], node.attrs["eps"])
    scale = inputs[3] if len(inputs) == 4 else None
    return quantize_activation(y, node.attrs["qdtype"], scale) + [total]


def _silu_mul_quant_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    width = shape[-1]
    expect(isinstance(width, int) and width % 2 == 0, node, f"last dim {width} is not even")
    out = (*shape[:-1], width // 2)
    if node.attrs["qdtype"] == FP8:
        _expect_scalar(node, graph, 1, "scale")
    elif len(node.inputs) == 2:
        _expect_vector(node, graph, 1, width // 2, "smoother")
    return _quant_outputs(node, out)


def _silu_mul_quant(node, inputs, ctx):
    gate, up = inputs[0].chunk(2, dim=-1)
    y = F.silu(gate) * up
    return quantize_activation(y, node.attrs["qdtype"], inputs[1] if len(inputs) == 2 else None)


# -- the KV cache ------------------------------------------------------------------------------
def quantize_kv(x: torch.Tensor, kv_dtype: str, scale: torch.Tensor) -> torch.Tensor:
    """K or V on their way into a quantized cache (static per-layer scale)."""
    if kv_dtype == FP8:
        return pack.to_fp8(x, scale)
    return pack.to_int(x, scale, pack.INT8_MIN, pack.INT8_MAX).to(torch.int8)


def dequantize_kv(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.float() * scale.float()


register("quantize_fp8", _quantize_fp8_infer,
         lambda node, x, ctx: [pack.to_fp8(x[0], x[1])])
register("quantize_int8", _quantize_int8_infer,
         lambda node, x, ctx: quantize_activation(x[0], "int8", x[1] if len(x) == 2 else None))
register("linear_fp8", _linear_fp8_infer, _linear_fp8)
register("linear_w8a8", _linear_w8a8_infer, _linear_w8a8)
register("linear_wo", _linear_wo_infer, _linear_wo)
register("rmsnorm_quant", _rmsnorm_quant_infer, _rmsnorm_quant)
register("add_rmsnorm_quant", _add_rmsnorm_quant_infer, _add_rmsnorm_quant)
register("silu_mul_quant", _silu_mul_quant_infer, _silu_mul_quant)
