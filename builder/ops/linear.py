"""Matrix ops: linear (x @ w.T + bias) and split along the last dim."""
from __future__ import annotations

import torch

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of


def _linear_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    _, wshape = of(graph, node.inputs[1])
    expect(len(wshape) == 2 and wshape[1] == shape[-1], node,
           f"weight {wshape} does not take width {shape[-1]}")
    if len(node.inputs) == 3:
        expect(of(graph, node.inputs[2])[1] == (wshape[0],), node, "bias does not match weight")
    return [(dtype, (*shape[:-1], wshape[0]))]


def _linear(node, inputs, ctx):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) == 3 else None
    return [torch.nn.functional.linear(x, w, bias)]


def _split_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    sizes = node.attrs["sizes"]
    expect(sum(sizes) == shape[-1], node, f"sizes {sizes} do not add up to {shape[-1]}")
    return [(dtype, (*shape[:-1], s)) for s in sizes]


register("linear", _linear_infer, _linear)
register("split", _split_infer,
         lambda node, x, ctx: list(torch.split(x[0], node.attrs["sizes"], dim=-1)))
