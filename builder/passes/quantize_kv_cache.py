"""Give each attention a quantized KV cache: attr kv_dtype and per-layer k_scale / v_scale
inputs (`layers.{i}.k_scale`, float32 [1]). No-op unless --kv-cache-dtype is fp8 or int8."""
from __future__ import annotations

from kiln.builder.errors import KilnError
from kiln.builder.ir import Graph, WeightSource


def _scalar(g: Graph, name: str, value) -> str:
    value = value.detach().cpu().reshape(1).float()
    return g.add_weight(name, "float32", (1,), WeightSource(load=lambda dtype: value.to(dtype),
                                                            describe=f"calibrated:{name}"))


def quantize_kv_cache(graph: Graph, build) -> Graph:
    if build.kv_cache_dtype not in ("fp8", "int8"):
        return graph
    if build.calibrator is None:
        raise KilnError(f"--kv-cache-dtype {build.kv_cache_dtype} needs calibration: build with "
                        "build_engine, or set BuildConfig.calibrator")
    calibration = build.calibrator.calibrate(graph, build)
    g = graph.copy()
    for node in g.nodes:
        if node.op != "attention" or node.attrs.get("kv_dtype"):
            continue
        layer = node.attrs["layer"]
        if layer not in calibration.kv_scales:
            raise KilnError(f"calibration has no KV cache scales for layer {layer}; use "
                            "--kv-cache-dtype auto or a checkpoint calibrated with a KV cache")
        k_scale, v_scale = calibration.kv_scales[layer]
        node.inputs += [_scalar(g, f"layers.{layer}.k_scale", k_scale),
                        _scalar(g, f"layers.{layer}.v_scale", v_scale)]
        node.attrs["kv_dtype"] = build.kv_dtype
    return g
