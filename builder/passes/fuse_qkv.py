"""Fuse the q, k and v projections of one input into one linear and a split (views)."""
from __future__ import annotations

from kiln.builder.ir import Graph, Node
from kiln.builder.passes._rewrite import concat_source


def _group(graph: Graph, linears: list[Node]) -> list[Node] | None:
    suffixes = [n.inputs[1].rsplit(".", 2)[-2] for n in linears]
    if sorted(suffixes) != ["k", "q", "v"]:
        return None
    by = dict(zip(suffixes, linears))
    ordered = [by["q"], by["k"], by["v"]]
    if len({len(n.inputs) for n in ordered}) != 1:
        return None
    return ordered


def fuse_qkv(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    linears_of: dict[str, list[Node]] = {}
    for node in g.nodes:
        if node.op == "linear" and g.values[node.inputs[1]].kind == "weight":
            linears_of.setdefault(node.inputs[0], []).append(node)
    for x, nodes in linears_of.items():
        qkv = _group(g, nodes) if len(nodes) == 3 else None
        if qkv is None:
            continue
        prefix = qkv[0].inputs[1].rsplit(".", 2)[0]
        weights = [n.inputs[1] for n in qkv]
        sizes = [g.values[w].shape[0] for w in weights]
        width = g.values[weights[0]].shape[1]
        dtype = g.values[weights[0]].dtype
        fused_w = g.add_weight(f"{prefix}.qkv.weight", dtype, (sum(sizes), width),
                               concat_source(g, weights))
        inputs = [x, fused_w]
        if len(qkv[0].inputs) == 3:
            biases = [n.inputs[2] for n in qkv]
            inputs.append(g.add_weight(f"{prefix}.qkv.bias", dtype, (sum(sizes),),
                                       concat_source(g, biases)))
        out = g.add_value(f"{prefix}.qkv", g.values[qkv[0].outputs[0]].dtype,
                          (*g.values[qkv[0].outputs[0]].shape[:-1], sum(sizes)))
        first = g.nodes.index(qkv[0])
        fused = [Node("linear", inputs, [out]),
                 Node("split", [out], [n.outputs[0] for n in qkv], {"sizes": sizes})]
        g.nodes = [n for n in g.nodes if n not in qkv]
        g.nodes[first:first] = fused
    return g
