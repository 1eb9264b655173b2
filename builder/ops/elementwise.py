"""Elementwise ops: add, mul, silu, silu_mul, gelu_tanh, gelu_tanh_mul, scale, softcap, cast.

gelu_tanh is GELU's tanh approximation (HF's gelu_pytorch_tanh: Gemma); scale multiplies by a
constant (Gemma's embedding normalizer, rounded to the dtype by the model; Granite's
multipliers); softcap is
cap * tanh(x / cap) (Gemma 2's final logits)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.builder.ir import torch_dtype
from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of, same_as_first


def _binary_infer(node, graph):
    a, b = of(graph, node.inputs[0]), of(graph, node.inputs[1])
    expect(a == b, node, f"operands differ: {a} vs {b}")
    return [a]


def _silu_mul_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    width = shape[-1]
    expect(isinstance(width, int) and width % 2 == 0, node, f"last dim {width} is not even")
    return [(dtype, (*shape[:-1], width // 2))]


def gate_and_up(node, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An act-mul's two halves of x[..., 2I]: [gate; up], or with the node's `pairs` (the gate/up
    linear's rows interleaved by fuse_gate_up) gate j and up j side by side."""
    if node.attrs.get("pairs"):
        return x[..., 0::2], x[..., 1::2]
    return x.chunk(2, dim=-1)


def _silu_mul(node, inputs, ctx):
    gate, up = gate_and_up(node, inputs[0])
    return [F.silu(gate) * up]


def _gelu_tanh_mul(node, inputs, ctx):
    gate, up = gate_and_up(node, inputs[0])
    return [F.gelu(gate, approximate="tanh") * up]


def _scale(node, inputs, ctx):
    return [inputs[0] * node.attrs["value"]]  # the value in float32, the product rounded once


def _softcap(node, inputs, ctx):
    cap = node.attrs["cap"]
    return [torch.tanh(inputs[0] / cap) * cap]


def _cast_infer(node, graph):
    return [(node.attrs["dtype"], of(graph, node.inputs[0])[1])]


register("add", _binary_infer, lambda node, x, ctx: [x[0] + x[1]])
register("mul", _binary_infer, lambda node, x, ctx: [x[0] * x[1]])
register("silu", same_as_first, lambda node, x, ctx: [F.silu(x[0])])
register("silu_mul", _silu_mul_infer, _silu_mul)
register("gelu_tanh", same_as_first, lambda node, x, ctx: [F.gelu(x[0], approximate="tanh")])
register("gelu_tanh_mul", _silu_mul_infer, _gelu_tanh_mul)
register("scale", same_as_first, _scale)
register("softcap", same_as_first, _softcap)
register("cast", _cast_infer, lambda node, x, ctx: [x[0].to(torch_dtype(node.attrs["dtype"]))])
