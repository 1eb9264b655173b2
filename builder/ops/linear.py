"""Matrix ops: linear (x @ w.T + bias) and split along the last dim.

A linear with the attribute `residual` takes the residual as its last input and returns
(x @ w.T + bias) + residual, the product rounded to the activation dtype before the add, as a
separate add rounds it (passes/fold_residual_into_linears.py)."""
from __future__ import annotations

import torch

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of


def residual_of(node) -> str | None:
    """The residual a GEMM node adds (its last input), or None."""
    return node.inputs[-1] if node.attrs.get("residual") else None


def operands(node, inputs: list) -> list:
    """`inputs` (the node's input names or their tensors) less the residual it adds, if any."""
    return inputs[:-1] if node.attrs.get("residual") else inputs


def expect_residual(node, graph, out) -> None:
    """A residual input, where the node has one, shaped and typed as its output `out`."""
    res = residual_of(node)
    if res is not None:
        expect(of(graph, res) == out, node, f"residual {of(graph, res)} does not match the "
                                            f"output {out}")


def _linear_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    _, wshape = of(graph, node.inputs[1])
    expect(len(wshape) == 2 and wshape[1] == shape[-1], node,
           f"weight {wshape} does not take width {shape[-1]}")
    if len(operands(node, node.inputs)) == 3:
        expect(of(graph, node.inputs[2])[1] == (wshape[0],), node, "bias does not match weight")
    out = (dtype, (*shape[:-1], wshape[0]))
    expect_residual(node, graph, out)
    return [out]


def _linear(node, inputs, ctx):
    x, w, *bias = operands(node, inputs)
    y = torch.nn.functional.linear(x, w, *bias)
    return [y + inputs[-1] if node.attrs.get("residual") else y]


def _split_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    sizes = node.attrs["sizes"]
    expect(sum(sizes) == shape[-1], node, f"sizes {sizes} do not add up to {shape[-1]}")
    return [(dtype, (*shape[:-1], s)) for s in sizes]


register("linear", _linear_infer, _linear)
register("split", _split_infer,
         lambda node, x, ctx: list(torch.split(x[0], node.attrs["sizes"], dim=-1)))
