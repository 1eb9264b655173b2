"""What calibration hands the quantize_* passes: per-linear weights and scales, per-layer KV
scales. Every scale is a dequantization factor (real value = stored value * scale)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from kiln.builder.ir import Graph


@dataclass(slots=True)
class LinearQuant:
    """How one linear (by its weight's value name, e.g. layers.0.qkv.weight) is quantized.

    weight            the float32 [N, K] weight to quantize, when calibration changed it
                      (SmoothQuant / AWQ smoothing, GPTQ updates); None: the graph's own weight
    weight_scale      fp8: [1]; int8: [N]; int4: [N, K // group_size]
    group_size        input channels per weight scale (int8 per-channel: K; fp8: 0)
    offsets           float32 [N, K // group_size]: an asymmetric int4 weight's group offsets
                      (w = (u - 8) * scale + offset); None: symmetric
    input_scale       fp8: the static per-tensor activation scale [1]
    pre_quant_scale   float32 [K]: the linear computes (x * pre_quant_scale) @ weight.T
    """
    weight_scale: torch.Tensor
    group_size: int = 0
    weight: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None
    pre_quant_scale: torch.Tensor | None = None


@dataclass(slots=True)
class Calibration:
    linears: dict[str, LinearQuant] = field(default_factory=dict)
    # layer -> (k_scale, v_scale), float32 [1] each
    kv_scales: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Calibrator(Protocol):
    """Where a build's scales come from: modelopt on calibration text, or a pre-quantized
    checkpoint. A calibrator serves one build: the first call computes, later calls (from the
    next quantize_* pass, on the graph that pass was given) return the same result."""

    def calibrate(self, graph: Graph, build) -> Calibration: ...


def quantized_linears(graph: Graph) -> list:
    """The linear nodes a quantization mode rewrites: every decoder-layer GEMM; the LM head
    stays in the engine's dtype (as in modelopt's recipes)."""
    return [n for n in graph.nodes if n.op == "linear" and n.inputs[1].startswith("layers.")
            and graph.values[n.inputs[1]].kind == "weight"]
