"""Fuse mul(act(x @ gate.T), x @ up.T) into one linear over [gate; up] and act_mul: silu_mul
for SiLU, gelu_tanh_mul for GELU's tanh form (Gemma).

Biased projections (Llama with mlp_bias) stay unfused."""
from __future__ import annotations

from kiln.builder.ir import Graph, Node
from kiln.builder.passes._rewrite import concat_source, single_user

FUSED = {"silu": "silu_mul", "gelu_tanh": "gelu_tanh_mul"}


def fuse_gate_up(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    made = g.producers()
    for mul in [n for n in g.nodes if n.op == "mul"]:
        act = made.get(mul.inputs[0])
        if act is None or act.op not in FUSED or not single_user(g, act.outputs[0]):
            continue
        gate, up = made.get(act.inputs[0]), made.get(mul.inputs[1])
        if not (gate and up and gate.op == up.op == "linear" and gate.inputs[0] == up.inputs[0]
                and len(gate.inputs) == len(up.inputs) == 2
                and single_user(g, gate.outputs[0]) and single_user(g, up.outputs[0])):
            continue
        wg, wu = gate.inputs[1], up.inputs[1]
        prefix = wg.rsplit(".", 2)[0]
        rows = g.values[wg].shape[0] + g.values[wu].shape[0]
        fused_w = g.add_weight(f"{prefix}.gate_up.weight", g.values[wg].dtype,
                               (rows, g.values[wg].shape[1]), concat_source(g, [wg, wu]))
        gu = g.add_value(f"{prefix}.gate_up", g.values[gate.outputs[0]].dtype,
                         (*g.values[gate.outputs[0]].shape[:-1], rows))
        first = g.nodes.index(gate)
        g.nodes = [n for n in g.nodes if n not in (gate, up, act, mul)]
        g.nodes[first:first] = [Node("linear", [gate.inputs[0], fused_w], [gu]),
                                Node(FUSED[act.op], [gu], [mul.outputs[0]])]
    return g
