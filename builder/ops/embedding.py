"""Row gathers: embedding lookup and last-token gather."""
from __future__ import annotations

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of


def _embedding_infer(node, graph):
    ids_dtype, ids_shape = of(graph, node.inputs[0])
    dtype, table = of(graph, node.inputs[1])
    expect(ids_dtype == "int32" and len(table) == 2, node, "needs int32 ids and a 2-D table")
    return [(dtype, (*ids_shape, table[1]))]


def _gather_last_infer(node, graph):
    dtype, shape = of(graph, node.inputs[0])
    idx_dtype, idx_shape = of(graph, node.inputs[1])
    expect(idx_dtype == "int32", node, "last_token_index must be int32")
    return [(dtype, (*idx_shape, *shape[1:]))]


register("embedding", _embedding_infer, lambda node, x, ctx: [x[1][x[0].long()]])
register("gather_last", _gather_last_infer, lambda node, x, ctx: [x[0][x[1].long()]])
