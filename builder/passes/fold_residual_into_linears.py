"""The residual add into the GEMM before it.

A linear (or linear_fp8) whose output only an add_rmsnorm (add_rmsnorm_quant) reads, as the x it
adds to the residual, becomes a linear with `residual` that returns the sum itself, and the norm
an rmsnorm (rmsnorm_quant) of that sum: the sum is still rounded after the product is (ops/
linear.py), so the graph computes the same values, and the norm kernel reads one row and writes
one where it read two and wrote two. On an H100 the o-projection and the add + RMSNorm after it
took 174.1 against 187.5 us a layer at 3,008 rows (cuBLAS adding the residual in its epilogue),
the down projection 539.3 against 551.4 (docs/results/residual-prefetch-2026-12-07).
"""
from __future__ import annotations

from kiln.builder.ir import Graph

# The norm that adds the residual, and what it becomes on the sum.
NORMS = {"add_rmsnorm": "rmsnorm", "add_rmsnorm_quant": "rmsnorm_quant"}
GEMMS = ("linear", "linear_fp8")


def fold_residual_into_linears(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    made = g.producers()
    consumers = g.consumers()
    for norm in [n for n in g.nodes if n.op in NORMS]:
        x, res = norm.inputs[0], norm.inputs[1]
        gemm = made.get(x)
        if (gemm is None or gemm.op not in GEMMS or gemm.attrs.get("residual")
                or consumers[x] != [norm] or g.values[x].kind != "activation"
                or (g.values[x].dtype, g.values[x].shape) != (g.values[res].dtype,
                                                              g.values[res].shape)
                or not _before(g, made, res, gemm)):
            continue
        total = norm.outputs[-1]  # add_rmsnorm: (normed, sum); the quant form: (q, .., sum)
        gemm.inputs.append(res)
        gemm.attrs["residual"] = True
        gemm.outputs = [total]
        norm.op = NORMS[norm.op]
        norm.inputs = [total] + norm.inputs[2:]
        norm.outputs = norm.outputs[:-1]
        del g.values[x]
    return g


def _before(g: Graph, made: dict, value: str, node) -> bool:
    """Whether `value` is defined before `node` runs, moving the node that makes it to just
    before `node` where its own inputs are (the last layer's residual, gathered to the last
    tokens after its o-projection on them)."""
    maker = made.get(value)
    at = g.nodes.index(node)
    if maker is None or g.nodes.index(maker) < at:
        return True
    if not all(made.get(i) is None or g.nodes.index(made[i]) < at for i in maker.inputs):
        return False
    g.nodes.remove(maker)
    g.nodes.insert(at, maker)
    return True
