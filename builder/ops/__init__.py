"""Op registry: every op has shape/dtype inference and a torch reference implementation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kiln.builder.ir import Graph, Node

Infer = Callable[[Node, Graph], list[tuple[str, tuple]]]
Reference = Callable[[Node, list[torch.Tensor], "StepContext"], list[torch.Tensor]]


@dataclass(slots=True)
class OpDef:
    name: str
    infer: Infer
    reference: Reference


@dataclass(slots=True)
class StepContext:
    """What references need beyond their inputs: the paged KV cache of the backend."""
    kv_cache: torch.Tensor | None = None  # [layers, 2, blocks, kv_heads, tokens_per_block, head_dim]


REGISTRY: dict[str, OpDef] = {}


def register(name: str, infer: Infer, reference: Reference) -> None:
    REGISTRY[name] = OpDef(name, infer, reference)


def get(op: str) -> OpDef:
    try:
        return REGISTRY[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(sorted(REGISTRY))}") from None


def infer(node: Node, graph: Graph) -> list[tuple[str, tuple]]:
    return get(node.op).infer(node, graph)


def run(node: Node, inputs: list[torch.Tensor], ctx: StepContext) -> list[torch.Tensor]:
    return get(node.op).reference(node, inputs, ctx)


from kiln.builder.ops import (attention, elementwise, embedding, linear, moe, norm,  # noqa: E402,F401
                              quant, rope)
