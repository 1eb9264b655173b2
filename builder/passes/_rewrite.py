"""Small helpers the fusion passes share."""
from __future__ import annotations

import torch

from kiln.builder.ir import Graph, WeightSource


def concat_source(graph: Graph, names: list[str], dim: int = 0) -> WeightSource:
    """A weight made of others, concatenated when (and only when) it is loaded."""
    parts = [graph.sources[n] for n in names]
    return WeightSource(load=lambda dtype: torch.cat([p.load(dtype) for p in parts], dim=dim),
                        describe="concat(" + ", ".join(names) + ")")


def interleave_source(graph: Graph, names: list[str]) -> WeightSource:
    """A weight of the rows of two others taken in turn (row 2j the first's row j, row 2j + 1 the
    second's), interleaved when (and only when) it is loaded."""
    parts = [graph.sources[n] for n in names]

    def load(dtype):
        a, b = (p.load(dtype) for p in parts)
        return torch.stack((a, b), dim=1).reshape(a.shape[0] * 2, *a.shape[1:])
    return WeightSource(load=load, describe="interleave(" + ", ".join(names) + ")")


def single_user(graph: Graph, value: str) -> bool:
    users = graph.consumers()[value]
    return len(users) == 1 and graph.values[value].kind != "output"


def toposort(graph: Graph) -> None:
    """Reorders nodes so every input is defined first, keeping the given order where it can."""
    defined = {n for n, v in graph.values.items() if v.kind in ("input", "weight")}
    pending, ordered = list(graph.nodes), []
    while pending:
        for i, node in enumerate(pending):
            if all(name in defined for name in node.inputs):
                ordered.append(pending.pop(i))
                defined.update(node.outputs)
                break
        else:
            raise ValueError(f"graph has a cycle or undefined input near {pending[0].op}")
    graph.nodes = ordered
