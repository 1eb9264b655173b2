"""Small hand-written graphs for the pass tests."""
from __future__ import annotations

import torch

from kiln.builder.ir import Graph, WeightSource
from kiln.builder.models.llama import STEP_INPUTS

H, NQ, NKV, HD, I, V = 16, 2, 1, 8, 24, 40
STEP = ["positions", "slot_mapping", "block_tables", "context_lens", "query_start"]


def weight(g: Graph, name: str, *shape: int) -> str:
    seed = sum(map(ord, name))
    return g.add_weight(name, "float32", shape, WeightSource(
        load=lambda dtype: torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype),
        describe=name))


def inputs(g: Graph) -> None:
    for name, (dtype, shape) in STEP_INPUTS.items():
        g.add_value(name, dtype, shape, "input")


def attention_attrs(rope=None) -> dict:
    return dict(layer=0, num_heads=NQ, num_kv_heads=NKV, head_dim=HD, scale=HD ** -0.5, rope=rope)


ROPE = {"head_dim": HD, "theta": 10000.0, "scaling": None}
