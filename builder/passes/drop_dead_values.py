"""Drop nodes whose results nobody reads, and values (weights too) nothing refers to."""
from __future__ import annotations

from kiln.builder.ir import Graph


def drop_dead_values(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    live = set(g.of_kind("output"))
    kept = []
    for node in reversed(g.nodes):
        if any(out in live for out in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    g.nodes = kept[::-1]
    used = live | set(g.of_kind("input"))
    for node in g.nodes:
        used.update(node.outputs)
    g.values = {k: v for k, v in g.values.items() if k in used}
    g.sources = {k: s for k, s in g.sources.items() if k in g.values}
    return g
