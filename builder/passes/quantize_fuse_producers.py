"""Fuse each activation quantization into the op that produces its input, so the norm or
SiLU-mul kernel writes the quantized activation directly (one pass over memory, not two):

    rmsnorm      + quantize_fp8 / quantize_int8 -> rmsnorm_quant
    add_rmsnorm  + quantize_fp8 / quantize_int8 -> add_rmsnorm_quant   (residual sum kept)
    silu_mul     + quantize_fp8 / quantize_int8 -> silu_mul_quant      (smoother kept)
    attention    + quantize_fp8                 -> attention, out_qdtype fp8 (the scale its
                                                   last input, the quantized output its second)

Only where the quantization is the produced value's sole reader. No-op on unquantized plans.
"""
from __future__ import annotations

from kiln.builder.ir import Graph, Node
from kiln.builder.passes._rewrite import single_user

QDTYPE = {"quantize_fp8": "float8_e4m3fn", "quantize_int8": "int8"}


def _fused(producer: Node, quant: Node) -> Node | None:
    extra = quant.inputs[1:]  # fp8: the scale; int8: the optional smoother
    qdtype = QDTYPE[quant.op]
    if producer.op == "attention":
        if qdtype != "float8_e4m3fn" or producer.attrs.get("out_qdtype"):
            return None
        return Node("attention", [*producer.inputs, *extra], [*producer.outputs, *quant.outputs],
                    dict(producer.attrs, out_qdtype=qdtype))
    if producer.op == "silu_mul":
        return Node("silu_mul_quant", [producer.inputs[0], *extra], quant.outputs,
                    {"qdtype": qdtype})
    if qdtype == "int8" and extra:
        return None  # a norm's smoother is folded into its weight (quantize_linears)
    if producer.op == "rmsnorm" and producer.outputs[0] == quant.inputs[0]:
        return Node("rmsnorm_quant", [*producer.inputs, *extra], quant.outputs,
                    dict(producer.attrs, qdtype=qdtype))
    if producer.op == "add_rmsnorm" and producer.outputs[0] == quant.inputs[0]:
        return Node("add_rmsnorm_quant", [*producer.inputs, *extra],
                    [*quant.outputs, producer.outputs[1]], dict(producer.attrs, qdtype=qdtype))
    return None


def quantize_fuse_producers(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    made = g.producers()
    for quant in [n for n in g.nodes if n.op in QDTYPE]:
        producer = made.get(quant.inputs[0])
        if producer is None or not single_user(g, quant.inputs[0]):
            continue
        fused = _fused(producer, quant)
        if fused is None:
            continue
        at = g.nodes.index(producer)
        g.nodes = [n for n in g.nodes if n is not producer and n is not quant]
        g.nodes.insert(at, fused)
        if quant.inputs[0] not in fused.outputs:  # attention keeps its unquantized output
            del g.values[quant.inputs[0]]
        made = g.producers()
    return g
