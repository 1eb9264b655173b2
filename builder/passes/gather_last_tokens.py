"""Gather the last token of each sequence before the LM head, not after it.

Row-wise ops commute with a row gather, so gather_last moves up through them: the final norm
and LM head then run on B rows instead of T.
"""
from __future__ import annotations

from kiln.builder.ir import Graph, Node
from kiln.builder.passes._rewrite import single_user, toposort

ROW_WISE = {"linear", "rmsnorm", "add", "cast", "silu", "mul", "silu_mul", "gelu_tanh",
            "gelu_tanh_mul", "scale", "softcap", "layernorm"}


def _row_operands(g: Graph, node: Node) -> list[int]:
    """Indices of a row-wise node's inputs that run over tokens (not weights)."""
    return [i for i, name in enumerate(node.inputs) if g.values[name].kind != "weight"]


def gather_last_tokens(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    moved = True
    while moved:
        moved = False
        made = g.producers()
        for gather in [n for n in g.nodes if n.op == "gather_last"]:
            src = made.get(gather.inputs[0])
            if src is None or src.op not in ROW_WISE or len(src.outputs) != 1:
                continue
            if not single_user(g, src.outputs[0]):
                continue
            index, out = gather.inputs[1], gather.outputs[0]
            new_nodes, new_inputs = [], list(src.inputs)
            for i in _row_operands(g, src):
                name = src.inputs[i]
                gathered = f"{name}.last"
                if gathered not in g.values:
                    v = g.values[name]
                    g.add_value(gathered, v.dtype, (g.values[index].shape[0], *v.shape[1:]))
                    new_nodes.append(Node("gather_last", [name, index], [gathered]))
                new_inputs[i] = gathered
            old_out = src.outputs[0]
            at = g.nodes.index(src)
            g.nodes = [n for n in g.nodes if n is not src and n is not gather]
            g.nodes[at:at] = new_nodes + [Node(src.op, new_inputs, [out], dict(src.attrs))]
            del g.values[old_out]
            moved = True
            break
    toposort(g)
    return g
