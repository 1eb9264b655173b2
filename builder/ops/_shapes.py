"""Shape helpers shared by the ops' inference functions."""
from __future__ import annotations

from kiln.builder.ir import Graph, Node


def of(graph: Graph, name: str) -> tuple[str, tuple]:
    v = graph.values[name]
    return v.dtype, tuple(v.shape)


def same_as_first(node: Node, graph: Graph) -> list[tuple[str, tuple]]:
    return [of(graph, node.inputs[0])]


def expect(cond: bool, node: Node, what: str) -> None:
    if not cond:
        raise ValueError(f"{node.op}({', '.join(node.inputs)}): {what}")
