"""Kiln's graph IR: typed values and topologically ordered nodes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

import torch

Dim = Union[int, str]  # an int, or a symbol: "T" tokens in the step, "B" sequences, "MAXBLK"
KINDS = ("input", "weight", "activation", "output")

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    # quantized weights, activations and KV caches (kiln.quantize.pack)
    "int8": torch.int8,
    "uint8": torch.uint8,
    "float8_e4m3fn": torch.float8_e4m3fn,
}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def dtype_size(name: str) -> int:
    return torch.empty((), dtype=DTYPES[name]).element_size()


@dataclass(slots=True)
class Value:
    name: str
    dtype: str
    shape: tuple[Dim, ...]
    kind: str = "activation"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"value {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"value {self.name}: dtype {self.dtype!r} not in {sorted(DTYPES)}")
        self.shape = tuple(self.shape)

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "kind": self.kind}


@dataclass(slots=True)
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"op": self.op, "inputs": list(self.inputs), "outputs": list(self.outputs),
                "attrs": self.attrs}


@dataclass(slots=True)
class WeightSource:
    """Where a weight's data comes from, read only when the engine writer asks for it.

    `load(dtype)` returns one tensor; fusion passes build new sources from old ones, so a
    fused weight is materialized once, while being written, never kept beside its parts.
    """
    load: Callable[[torch.dtype], torch.Tensor]
    describe: str = ""


class Graph:
    """A network: values by name, nodes in topological order, lazy weight sources."""

    def __init__(self) -> None:
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.sources: dict[str, WeightSource] = {}
        self.memory_plan: dict | None = None  # set by the plan_memory pass

    # -- construction ---------------------------------------------------------------------
    def add_value(self, name: str, dtype: str, shape: Iterable[Dim], kind: str = "activation") -> str:
        if name in self.values:
            raise ValueError(f"value {name} defined twice")
        self.values[name] = Value(name, dtype, tuple(shape), kind)
        return name

    def add_weight(self, name: str, dtype: str, shape: Iterable[Dim], source: WeightSource) -> str:
        self.add_value(name, dtype, shape, "weight")
        self.sources[name] = source
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> Node:
        for name in inputs:
            if name not in self.values:
                raise ValueError(f"{op}: input {name} is not defined")
        node = Node(op, list(inputs), list(outputs), dict(attrs))
        self.nodes.append(node)
        return node

    def call(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        """Adds a node and defines its outputs from the op's shape inference."""
        from kiln.builder.ops import infer

        node = Node(op, list(inputs), list(outputs), dict(attrs))
        for name in inputs:
            if name not in self.values:
                raise ValueError(f"{op}: input {name} is not defined")
        for name, (dtype, shape) in zip(outputs, infer(node, self)):
            self.add_value(name, dtype, shape)
        self.nodes.append(node)
        return outputs

    # -- queries ----------------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[str]:
        return [n for n, v in self.values.items() if v.kind == kind]

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {name: [] for name in self.values}
        for node in self.nodes:
            for name in node.inputs:
                users[name].append(node)
        return users

    def ops(self) -> list[str]:
        return [node.op for node in self.nodes]

    def copy(self) -> "Graph":
        g = Graph()
        g.values = {k: dataclasses.replace(v) for k, v in self.values.items()}
        g.nodes = [Node(n.op, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in self.nodes]
        g.sources = dict(self.sources)
        g.memory_plan = self.memory_plan
        return g

    def verify(self) -> None:
        """Checks topological order, single definitions and inferred shapes."""
        from kiln.builder.ops import infer

        defined = {n for n, v in self.values.items() if v.kind in ("input", "weight")}
        for node in self.nodes:
            for name in node.inputs:
                if name not in defined:
                    raise ValueError(f"{node.op}: input {name} used before it is defined")
            for out, (dtype, shape) in zip(node.outputs, infer(node, self)):
                if out in defined:
                    raise ValueError(f"{node.op}: output {out} defined twice")
                have = self.values[out]
                if have.dtype != dtype or tuple(have.shape) != tuple(shape):
                    raise ValueError(f"{node.op}: {out} is {have.dtype}{list(have.shape)}, "
                                     f"inference says {dtype}{list(shape)}")
                defined.add(out)
        for name in self.of_kind("output"):
            if name not in defined:
                raise ValueError(f"output {name} is never computed")

    # -- serialization --------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"values": {k: v.to_json() for k, v in self.values.items()},
                "nodes": [n.to_json() for n in self.nodes],
                "memory_plan": self.memory_plan}

    @classmethod
    def from_json(cls, data: dict) -> "Graph":
        g = cls()
        for name, v in data["values"].items():
            g.values[name] = Value(name, v["dtype"], tuple(v["shape"]), v["kind"])
        g.nodes = [Node(n["op"], n["inputs"], n["outputs"], n["attrs"]) for n in data["nodes"]]
        g.memory_plan = data.get("memory_plan")
        return g

    def structure(self) -> list[tuple]:
        """A comparable form of the graph for before/after pass tests."""
        return [(n.op, tuple(n.inputs), tuple(n.outputs), repr(sorted(n.attrs.items())))
                for n in self.nodes]

    def __repr__(self) -> str:
        lines = [f"Graph({len(self.nodes)} nodes)"]
        lines += [f"  {', '.join(n.outputs)} = {n.op}({', '.join(n.inputs)})" for n in self.nodes]
        return "\n".join(lines)
