"""Norms: rmsnorm, add_rmsnorm (residual add fused), head_rmsnorm (per head), layernorm
(mean and variance over the row, a weight, and a bias where a third input is given)."""
from __future__ import annotations

import torch

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HuggingFace's LlamaRMSNorm: normalize in float32, scale in the input dtype."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """HuggingFace's CohereLayerNorm (and torch's LayerNorm with `bias`): all in float32,
    rounded once."""
    xf = x.to(torch.float32)
    centered = xf - xf.mean(-1, keepdim=True)
    xf = weight.to(torch.float32) * (centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps))
    return (xf if bias is None else xf + bias.to(torch.float32)).to(x.dtype)


def _layernorm_infer(node, graph):
    out = _rmsnorm_infer(node, graph)
    if len(node.inputs) == 3:
        expect(of(graph, node.inputs[2])[1] == of(graph, node.inputs[1])[1], node,
               "bias does not match the weight")
    return out


def _rmsnorm_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    _, wshape = of(graph, node.inputs[1])
    expect(wshape == (shape[-1],), node, f"weight {wshape} does not match width {shape[-1]}")
    return [(dtype, shape)]


def _add_rmsnorm_infer(node, graph):
    x, res = of(graph, node.inputs[0]), of(graph, node.inputs[1])
    expect(x == res, node, f"x {x} and residual {res} differ")
    _, wshape = of(graph, node.inputs[2])
    expect(wshape == (x[1][-1],), node, f"weight {wshape} does not match width {x[1][-1]}")
    return [x, x]


def _add_rmsnorm(node, inputs, ctx):
    x, residual, weight = inputs
    total = x + residual
    return [rms_norm(total, weight, node.attrs["eps"]), total]


def _head_rmsnorm_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    hd = node.attrs["head_dim"]
    expect(shape[-1] % hd == 0, node, f"width {shape[-1]} is not a multiple of head_dim {hd}")
    expect(of(graph, node.inputs[1])[1] == (hd,), node, "weight is not [head_dim]")
    return [(dtype, shape)]


def _head_rmsnorm(node, inputs, ctx):
    x, weight = inputs
    hd = node.attrs["head_dim"]
    heads = x.reshape(*x.shape[:-1], -1, hd)
    return [rms_norm(heads, weight, node.attrs["eps"]).reshape(x.shape)]


register("rmsnorm", _rmsnorm_infer, lambda node, x, ctx: [rms_norm(x[0], x[1], node.attrs["eps"])])
register("add_rmsnorm", _add_rmsnorm_infer, _add_rmsnorm)
register("head_rmsnorm", _head_rmsnorm_infer, _head_rmsnorm)
register("layernorm", _layernorm_infer,
         lambda node, x, ctx: [layer_norm(x[0], x[1], node.attrs["eps"], *x[2:])])
