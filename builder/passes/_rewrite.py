"""Small helpers the fusion passes share."""
from __future__ import annotations

import torch

from kiln.builder.ir import Graph, WeightSource


def concat_source(graph: Graph, names: list[str], dim: int = 0) -> WeightSource:
    """A weight made of others, concatenated when (and only when) it is loaded."""
    parts = [graph.sources[n] for n in names]
    return WeightSource(load=lambda dtype: torch.cat([p.load(dtype) for p in parts], dim=dim),
                        describe="concat(" + ", ".join(names) + ")")


def single_user(graph: Graph, value: str) -> bool:
    users = graph.consumers()[value]
    return len(users) == 1 and graph.values[value].kind != "output"
