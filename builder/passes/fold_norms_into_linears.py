"""Mark each rmsnorm / add_rmsnorm whose normalized output feeds only the linear right after it
(`fold_into_next`). The GPU lowering then runs the norm inside that linear's GEMM step, where a
small-M alternative can do both in one kernel (kernels/gemm.py, fold_norm), and the memory
plan keeps the norm's inputs alive through the linear, which may read them."""
from __future__ import annotations

from kiln.builder.ir import Graph

NORMS = ("rmsnorm", "add_rmsnorm")


def fold_norms_into_linears(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    consumers = g.consumers()
    for node, nxt in zip(g.nodes, g.nodes[1:]):
        normed = node.outputs[0] if node.op in NORMS else None
        if normed and nxt.op == "linear" and nxt.inputs[0] == normed and consumers[normed] == [nxt]:
            node.attrs["fold_into_next"] = True
    return g
