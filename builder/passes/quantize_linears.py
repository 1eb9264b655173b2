"""Rewrite each decoder linear into its quantized GEMM, with weights quantized and packed.

    fp8      quantize_fp8(x, input_scale) -> linear_fp8(q, w fp8, input_scale, weight_scale)
    int8_sq  quantize_int8(x, [smoother]) -> linear_w8a8(q, row_scale, w int8, weight_scale)
    int8_wo, int4_awq, int4_gptq
             linear_wo(x, w, weight_scale, [weight_offset], [pre_quant_scale])

A weight keeps its name and takes its quantized dtype; its scales sit beside it
(`<prefix>.weight_scale`, `.input_scale`, `.weight_offset`, `.pre_quant_scale`, HF-style). A
pre-quant scale (SmoothQuant's smoother, AWQ's scale) is folded into the RMSNorm weight that
feeds the linear when the norm's output has no other reader, and kept as an input otherwise.
Weights are quantized lazily, when the engine writer reads them. No-op without --quant.
"""
from __future__ import annotations

import torch

from kiln.builder.errors import KilnError
from kiln.builder.ir import Graph, Node, WeightSource, torch_dtype
from kiln.builder.passes._rewrite import single_user
from kiln.quantize import pack
from kiln.quantize.calibration import LinearQuant, quantized_linears

NORMS = ("rmsnorm", "add_rmsnorm")
QUANTIZE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _lazy(fn, describe: str) -> WeightSource:
    return WeightSource(load=lambda dtype: fn().to(dtype), describe=describe)


def _constant(g: Graph, name: str, tensor: torch.Tensor, dtype: str = "float32") -> str:
    tensor = tensor.detach().cpu()
    return g.add_weight(name, dtype, tuple(tensor.shape),
                        _lazy(lambda: tensor, f"calibrated:{name}"))


def _fold_into_norm(g: Graph, x: str, pqs: torch.Tensor) -> bool:
    """Scales the RMSNorm weight that produces x by pqs; False if x is not such a norm's sole
    output to this linear."""
    norm = g.producers().get(x)
    if norm is None or norm.op not in NORMS or norm.outputs[0] != x or not single_user(g, x):
        return False
    w = norm.inputs[-1]
    source, value = g.sources[w], g.values[w]
    folded = g.add_weight(w.rsplit(".", 1)[0] + ".smoothed_weight", value.dtype, value.shape,
                          _lazy(lambda: source.load(torch.float32) * pqs, f"{w} * pre_quant_scale"))
    norm.inputs[-1] = folded
    return True


def quantize_linears(graph: Graph, build) -> Graph:
    if build.quant == "none":
        return graph
    if build.calibrator is None:
        raise KilnError(f"--quant {build.quant} needs calibration: build with build_engine, or "
                        "set BuildConfig.calibrator")
    calibration = build.calibrator.calibrate(graph, build)
    g = graph.copy()
    for node in quantized_linears(g):
        w = node.inputs[1]
        lq = calibration.linears.get(w)
        if lq is None:
            raise KilnError(f"calibration has no scales for {w}; the checkpoint's quantization "
                            "does not cover this layer: rebuild without --quant or from the "
                            "unquantized checkpoint")
        at = g.nodes.index(node)
        g.nodes[at:at + 1] = _rewrite(g, node, lq, build)
    return g


def _quantized_weight(g: Graph, w: str, lq: LinearQuant, dtype: str, shape: tuple,
                      quantize) -> None:
    """Replaces weight w by its quantized form, computed from its float32 value on demand."""
    source = g.sources[w]
    weight = lq.weight

    def load() -> torch.Tensor:
        # On the GPU when there is one: rounding 8B float32 values on the host takes a minute.
        t = weight if weight is not None else source.load(torch.float32)
        return quantize(t.to(QUANTIZE_DEVICE)).cpu()

    g.values[w].dtype, g.values[w].shape = dtype, shape
    g.sources[w] = _lazy(load, f"quantized:{w}")


def _rewrite(g: Graph, node: Node, lq: LinearQuant, build) -> list[Node]:
    x, w, out = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2:]
    prefix = w.rsplit(".", 1)[0]
    n, k = g.values[w].shape
    act_dtype = g.values[out].dtype
    pqs = lq.pre_quant_scale
    if pqs is not None and _fold_into_norm(g, x, pqs):
        pqs = None

    if build.quant == "fp8":
        scale = lq.weight_scale
        _quantized_weight(g, w, lq, "float8_e4m3fn", (n, k), lambda t: pack.to_fp8(t, scale))
        ws = _constant(g, f"{prefix}.weight_scale", lq.weight_scale)
        xs = _constant(g, f"{prefix}.input_scale", lq.input_scale)
        q = g.add_value(f"{out}.x_fp8", "float8_e4m3fn", g.values[x].shape)
        return [Node("quantize_fp8", [x, xs], [q]),
                Node("linear_fp8", [q, w, xs, ws, *bias], [out], {"dtype": act_dtype})]

    if build.quant == "int8_sq":
        _quantized_weight(g, w, lq, "int8", (n, k),
                          lambda t: pack.quantize_weight(t, 8, lq.weight_scale[:, None], k))
        ws = _constant(g, f"{prefix}.weight_scale", lq.weight_scale)
        smoother = [] if pqs is None else [_constant(g, f"{prefix}.pre_quant_scale", pqs)]
        q = g.add_value(f"{out}.x_int8", "int8", g.values[x].shape)
        rs = g.add_value(f"{out}.x_scale", "float32", g.values[x].shape[:-1])
        return [Node("quantize_int8", [x, *smoother], [q, rs]),
                Node("linear_w8a8", [q, rs, w, ws, *bias], [out], {"dtype": act_dtype})]

    bits = 8 if build.quant == "int8_wo" else 4
    group = lq.group_size or k
    # Stored in the activation dtype, as the kernel reads them; weights are rounded with the
    # stored values so that the engine is consistent with itself.
    act = torch_dtype(act_dtype)
    scales = lq.weight_scale.reshape(n, k // group).to(act).float()
    offsets = None if lq.offsets is None else lq.offsets.reshape(n, k // group).to(act).float()
    shape = (n, k) if bits == 8 else (n, k // 2)
    _quantized_weight(g, w, lq, "int8" if bits == 8 else "uint8", shape,
                      lambda t: pack.quantize_weight(t, bits, scales, group, offsets))
    inputs = [x, w, _constant(g, f"{prefix}.weight_scale", scales.to(act), act_dtype)]
    if offsets is not None:
        inputs.append(_constant(g, f"{prefix}.weight_offset", offsets.to(act), act_dtype))
    if pqs is not None:
        inputs.append(_constant(g, f"{prefix}.pre_quant_scale", pqs))
    attrs = {"bits": bits, "group_size": group, "offset": offsets is not None,
             "pre_quant_scale": pqs is not None, "bias": bool(bias)}
    return [Node("linear_wo", inputs + list(bias), [out], attrs)]
