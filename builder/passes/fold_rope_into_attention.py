"""Fold the RoPE of q and k into attention, where it is applied on the way to the KV write."""
from __future__ import annotations

from kiln.builder.ir import Graph
from kiln.builder.passes._rewrite import single_user


def fold_rope_into_attention(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    made = g.producers()
    dead = []
    for attn in [n for n in g.nodes if n.op == "attention" and not n.attrs.get("rope")]:
        rq, rk = made.get(attn.inputs[0]), made.get(attn.inputs[1])
        positions = attn.inputs[3]
        if not (rq and rk and rq.op == rk.op == "rope" and rq.attrs == rk.attrs
                and rq.inputs[1] == rk.inputs[1] == positions
                and single_user(g, rq.outputs[0]) and single_user(g, rk.outputs[0])):
            continue
        attn.inputs[0], attn.inputs[1] = rq.inputs[0], rk.inputs[0]
        attn.attrs["rope"] = dict(rq.attrs)
        dead += [rq, rk]
    g.nodes = [n for n in g.nodes if not any(n is d for d in dead)]
    return g
