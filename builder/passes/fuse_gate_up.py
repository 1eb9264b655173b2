"""Fuse mul(act(x @ gate.T), x @ up.T) into one linear over [gate; up] and act_mul: silu_mul
for SiLU, gelu_tanh_mul for GELU's tanh form (Gemma).

In a 16-bit build with no weight quantization the fused weight's rows are the gate's and the
up's in turn (row 2j gate j, row 2j + 1 up j) and the act-mul is marked `pairs`: a GEMM tile of
2n consecutive rows then holds n outputs' gates and ups side by side, which a kernel that
writes silu(gate) * up itself (gemm.py's GLU forms) reads as one product. Quantized builds
keep [gate; up], whose scales and packing the quantization passes lay out by those halves.

Biased projections (Llama with mlp_bias) stay unfused."""
from __future__ import annotations

from kiln.builder.ir import Graph, Node
from kiln.builder.passes._rewrite import concat_source, interleave_source, single_user

FUSED = {"silu": "silu_mul", "gelu_tanh": "gelu_tanh_mul"}


PAIRED_DTYPES = ("bfloat16", "float16")


def pairs_for(build) -> bool:
    """Whether `build` lays the fused gate/up rows out in pairs (a 16-bit build whose linears
    stay unquantized)."""
    return (build is not None and getattr(build, "dtype", None) in PAIRED_DTYPES
            and getattr(build, "quant", "none") == "none")


def fuse_gate_up(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    pairs = pairs_for(build)
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
        source = interleave_source(g, [wg, wu]) if pairs else concat_source(g, [wg, wu])
        fused_w = g.add_weight(f"{prefix}.gate_up.weight", g.values[wg].dtype,
                               (rows, g.values[wg].shape[1]), source)
        gu = g.add_value(f"{prefix}.gate_up", g.values[gate.outputs[0]].dtype,
                         (*g.values[gate.outputs[0]].shape[:-1], rows))
        first = g.nodes.index(gate)
        g.nodes = [n for n in g.nodes if n not in (gate, up, act, mul)]
        g.nodes[first:first] = [Node("linear", [gate.inputs[0], fused_w], [gu]),
                                Node(FUSED[act.op], [gu], [mul.outputs[0]],
                                     {"pairs": True} if pairs else {})]
    return g
