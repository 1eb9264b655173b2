"""Fuse a residual add and the RMSNorm that reads it into add_rmsnorm (normed, sum)."""
from __future__ import annotations

from kiln.builder.ir import Graph, Node


def fuse_add_rmsnorm(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    made = g.producers()
    for norm in [n for n in g.nodes if n.op == "rmsnorm"]:
        add = made.get(norm.inputs[0])
        if add is None or add.op != "add":
            continue
        fused = Node("add_rmsnorm", [add.inputs[1], add.inputs[0], norm.inputs[1]],
                     [norm.outputs[0], add.outputs[0]], dict(norm.attrs))
        at = g.nodes.index(add)
        g.nodes = [n for n in g.nodes if n is not add and n is not norm]
        g.nodes.insert(at, fused)
    return g
