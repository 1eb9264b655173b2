"""Mark each kernel whose output feeds only the linear right after it (`fold_into_next`): an
rmsnorm / add_rmsnorm / silu_mul before a linear, and an FP8 quantization (quantize_fp8, or one
fused into its producer) before a linear_fp8; and a silu_mul that alone reads the linear right
before it (`fold_into_previous`: a gate/up GEMM's SiLU-mul, FP8-quantized after a linear_fp8,
plain after a weight-only linear_wo, which then folds into that GEMM rather than into the one
after). The GPU lowering runs the
kernel inside the linear's GEMM step, where the one-row and small-M alternatives do both in one
kernel (kernels/gemm.py, fold and take_epilogue), and the memory plan keeps the inputs of every
node of that step alive to its end."""
from __future__ import annotations

from kiln.builder.ir import Graph

FOLDABLE = {"linear": ("rmsnorm", "add_rmsnorm", "silu_mul"),
            "linear_fp8": ("quantize_fp8", "rmsnorm_quant", "add_rmsnorm_quant",
                           "silu_mul_quant")}


EPILOGUES = {"linear": ("silu_mul",), "linear_fp8": ("silu_mul_quant",),
             "linear_wo": ("silu_mul",)}


def _epilogue(node, nxt) -> bool:
    """Whether nxt is a SiLU-mul a GEMM kernel can write after node's product: any after a
    linear or a weight-only linear_wo, an FP8 one (static scale) after a linear_fp8."""
    if nxt.op not in EPILOGUES.get(node.op, ()):
        return False
    return nxt.op != "silu_mul_quant" or (nxt.attrs.get("qdtype") == "float8_e4m3fn"
                                          and len(nxt.inputs) == 2)


def fold_into_linears(graph: Graph, build=None) -> Graph:
    g = graph.copy()
    consumers = g.consumers()
    for node, nxt in zip(g.nodes, g.nodes[1:]):
        out = node.outputs[0]
        if (_epilogue(node, nxt) and nxt.inputs[0] == out
                and consumers[out] == [nxt]):
            nxt.attrs["fold_into_previous"] = True
    for node, nxt in zip(g.nodes, g.nodes[1:]):
        out = node.outputs[0]
        if (node.op in FOLDABLE.get(nxt.op, ()) and nxt.inputs[0] == out
                and consumers[out] == [nxt] and not node.attrs.get("fold_into_previous")):
            node.attrs["fold_into_next"] = True
    return g
