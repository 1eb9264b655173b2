"""Calibration through nvidia-modelopt, on the plan's own fused GEMMs (see graph_module.py).

Each mode starts from modelopt's recipe: FP8_DEFAULT_CFG; INT8_SMOOTHQUANT_CFG (alpha 0.5,
then per-token dynamic activations, as the INT8 GEMM computes them); INT8_WEIGHT_ONLY_CFG;
INT4_AWQ_CFG (awq_lite); INT4_BLOCKWISE_WEIGHT_ONLY_CFG with GPTQ; FP8_KV_CFG and its int8
twin for the KV cache. The calibrated module stays on `self.module`: it is modelopt's
fake-quantized model of the engine, which the tests compare the engine against.

The int4 modes' weight quantizers are Kiln's own asymmetric groups with float offsets
(int4_calib.py: a modelopt quantizer backend), so that AWQ's scale search and GPTQ's updates
evaluate the grid the engine stores; AWQ also weighs leaving a weight unscaled.
"""
from __future__ import annotations

import copy
import time
import warnings

import torch

from kiln.builder.errors import KilnError
from kiln.builder.ir import Graph
from kiln.quantize import pack
from kiln.quantize.calibration import Calibration, LinearQuant, quantized_linears
from kiln.quantize.graph_module import GraphModule, KVCacheInput, module_key
from kiln.quantize.int4_calib import (MIN_MAX_BACKEND, UnscaledCandidate,
                                      register_min_max_backend, scales_and_offsets)
from kiln.quantize.mode import GROUP_SIZES, INT4_MODES

SMOOTHQUANT_ALPHA = 0.5
TOKENS_PER_FORWARD = 2048
PER_TOKEN_DYNAMIC = {"num_bits": 8, "axis": None, "block_sizes": {-1: None, "type": "dynamic"}}


def import_modelopt():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # modelopt warns about untested transformers versions
            import modelopt.torch.quantization as mtq
            from modelopt.torch.quantization.nn import QuantModuleRegistry
    except ImportError as error:
        raise KilnError(f"calibration needs nvidia-modelopt ({error.name} is missing); install "
                        "it with pip install 'kiln[quant]'") from None
    if KVCacheInput not in QuantModuleRegistry:
        QuantModuleRegistry.register({KVCacheInput: "kiln.KVCacheInput"})(_quant_kv_class())
    _torch_fake_quant()
    register_min_max_backend()
    return mtq


def _torch_fake_quant() -> None:
    """modelopt compiles CUDA extensions for its fake quantizers the first time one runs on a
    GPU (about 50 s each on an H100 host, once per machine). Without them modelopt takes its
    torch path, the one it runs on the CPU (FP8: x * (448 / amax), saturated, cast to e4m3 and
    back; integers: round(x * bound / amax) clamped, times amax / bound), so calibration
    computes the same on the GPU as on the CPU and a first build compiles nothing. Its int4
    block quantizer takes that path on the GPU in any case."""
    from modelopt.torch.quantization import extensions

    for loader in (extensions.get_cuda_ext, extensions.get_cuda_ext_fp8):
        if not hasattr(loader, "extension"):
            loader.extension = None


def _quant_kv_class():
    """KVCacheInput as modelopt quantizes it: K and V through k/v_bmm_quantizer, the names
    modelopt's KV cache recipes (FP8_KV_CFG) address."""
    from modelopt.torch.quantization.nn import QuantModule, TensorQuantizer

    class QuantKVCacheInput(QuantModule):
        def _setup(self):
            self.k_bmm_quantizer = TensorQuantizer()
            self.v_bmm_quantizer = TensorQuantizer()

        def forward(self, k, v):
            return self.k_bmm_quantizer(k), self.v_bmm_quantizer(v)

    return QuantKVCacheInput


def group_size_for(weight_name: str, k: int, requested: int | None = None,
                   native: int | None = None) -> int:
    """The int4 group of a GEMM with K input channels: `requested` (--quant-group-size), which
    must divide K; by default the checkpoint's `native` blocks (a GGUF's Q4_1: 32) where they
    are one of GROUP_SIZES and divide K, else the largest of GROUP_SIZES that does."""
    if requested is not None:
        if k % requested:
            fits = [g for g in GROUP_SIZES if k % g == 0]
            hint = f"use {' or '.join(map(str, fits))}" if fits else "use --quant int8_wo or fp8"
            raise KilnError(f"--quant-group-size {requested} does not divide K={k} of "
                            f"{weight_name}; {hint} for this model")
        return requested
    if native in GROUP_SIZES and k % native == 0:
        return native
    for group in GROUP_SIZES:
        if k % group == 0:
            return group
    raise KilnError(f"int4 weights need K divisible by {GROUP_SIZES[-1]}, but {weight_name} has "
                    f"K={k}; use --quant int8_wo or fp8 for this model")


def modelopt_config(quant: str, kv_cache_dtype: str, group_sizes: dict[str, int]) -> dict:
    """The modelopt quantize config of a Kiln mode; group_sizes: module key -> int4 group."""
    mtq = import_modelopt()
    base = {"none": None, "fp8": mtq.FP8_DEFAULT_CFG, "int8_sq": mtq.INT8_SMOOTHQUANT_CFG,
            "int8_wo": mtq.INT8_WEIGHT_ONLY_CFG, "int4_awq": mtq.INT4_AWQ_CFG,
            "int4_gptq": mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG}[quant]
    cfg = copy.deepcopy(base) if base else {"quant_cfg": [{"quantizer_name": "*", "enable": False}],
                                            "algorithm": "max"}
    if quant == "int8_sq":
        cfg["algorithm"] = {"method": "smoothquant", "alpha": SMOOTHQUANT_ALPHA}
    if quant == "int4_gptq":
        cfg["algorithm"] = {"method": "gptq"}
    if quant == "int4_awq":  # keep awq_lite's losses for UnscaledCandidate
        cfg["algorithm"] = dict(cfg["algorithm"], debug=True)
    for key, group in group_sizes.items():
        blocks = {-1: group, "type": "static"}
        cfg["quant_cfg"].append({"quantizer_name": f"linears.{key}.weight_quantizer",
                                 "cfg": {"num_bits": 4, "block_sizes": blocks,
                                         "backend": MIN_MAX_BACKEND}})
    if kv_cache_dtype == "fp8":
        cfg["quant_cfg"] += copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
    elif kv_cache_dtype == "int8":
        cfg["quant_cfg"].append({"quantizer_name": "*[kv]_bmm_quantizer",
                                 "cfg": {"num_bits": 8, "axis": None}})
    return cfg


class ModeloptCalibrator:
    """Calibrates a build on `batches` (int64 [N, L] token windows) with modelopt;
    `native_group_size`: the int4 group the checkpoint's weights already have (the default
    without --quant-group-size)."""

    def __init__(self, batches: torch.Tensor, device: str | None = None,
                 native_group_size: int | None = None) -> None:
        self.batches = batches
        self.native_group_size = native_group_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module: GraphModule | None = None
        self._result: Calibration | None = None
        self.seconds = 0.0  # the calibration's wall time, once it has run
        self.unscaled: list[str] = []  # int4_awq: the linears AWQ's scaling left as they were

    def calibrate(self, graph: Graph, build) -> Calibration:
        if self._result is None:
            start = time.perf_counter()
            self._result = self._run(graph, build)
            self.seconds = time.perf_counter() - start
        return self._result

    def forward_loop(self, module: GraphModule) -> None:
        rows = max(1, TOKENS_PER_FORWARD // self.batches.shape[1])
        with torch.no_grad():
            for start in range(0, self.batches.shape[0], rows):
                # Logits of every token: gather_last_tokens moved the last token gather into the
                # last layer, whose GEMMs must see every token, as in the engine's prefill.
                module(self.batches[start: start + rows], all_logits=True)

    def _run(self, graph: Graph, build) -> Calibration:
        mtq = import_modelopt()
        quant, kv = build.quant, build.kv_cache_dtype
        linears = quantized_linears(graph) if quant != "none" else []
        kv_quant = kv in ("fp8", "int8")
        module = GraphModule(graph, linears, kv_quantizers=kv_quant, device=self.device)
        groups = {}
        if quant in INT4_MODES:
            groups = {module_key(w): group_size_for(w, graph.values[w].shape[1],
                                                    build.quant_group_size,
                                                    self.native_group_size)
                      for w in (n.inputs[1] for n in linears)}
        unscaled = UnscaledCandidate() if quant == "int4_awq" else None
        loop = unscaled.forward_loop(self.forward_loop) if unscaled else self.forward_loop
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mtq.quantize(module, modelopt_config(quant, kv, groups), forward_loop=loop)
            if unscaled:
                names = {module_key(n.inputs[1]): n.inputs[1] for n in linears}
                self.unscaled = unscaled.settle(
                    module, lambda key: graph.sources[names[key]].load(torch.float32))
            if quant == "int8_sq":  # the INT8 GEMM quantizes each token with its own scale
                mtq.set_quantizer_attribute(module, "*input_quantizer", PER_TOKEN_DYNAMIC)
                for lin in module.linears.values():
                    lin.input_quantizer.reset_amax()
        module.eval()
        self.module = module
        result = Calibration()
        for node in linears:
            result.linears[node.inputs[1]] = _linear_quant(quant, module.linear(node.inputs[1]),
                                                           groups.get(module_key(node.inputs[1])))
        bound = pack.FP8_MAX if kv == "fp8" else pack.INT8_MAX
        for layer, holder in module.kv.items():
            result.kv_scales[int(layer)] = tuple(
                pack.scale_from_amax(q.amax.detach().reshape(1).cpu(), bound)
                for q in (holder.k_bmm_quantizer, holder.v_bmm_quantizer))
        return result


def _linear_quant(quant: str, lin, group: int | None) -> LinearQuant:
    n, k = lin.weight.shape
    iq = lin.input_quantizer
    pqs = None
    if getattr(iq, "_enable_pre_quant_scale", False) and iq.pre_quant_scale is not None:
        pqs = iq.pre_quant_scale.detach().float().cpu().reshape(k)
    if quant in INT4_MODES:  # AWQ and GPTQ change the weight, so it is kept
        weight = lin.weight.detach().float().cpu()
        scales, offsets = scales_and_offsets(lin, weight, group)
        return LinearQuant(weight_scale=scales, group_size=group, weight=weight,
                           offsets=offsets, pre_quant_scale=pqs)
    amax = lin.weight_quantizer.amax.detach().float().cpu()
    if quant == "fp8":
        return LinearQuant(weight_scale=pack.scale_from_amax(amax.reshape(1), pack.FP8_MAX),
                           input_scale=pack.scale_from_amax(iq.amax.detach().cpu().reshape(1),
                                                            pack.FP8_MAX))
    # Smoothing (int8_sq) changes the weight, so it is kept; FP8 and int8_wo quantize the
    # checkpoint's own, read again as the engine is written.
    if quant == "int8_sq":
        return LinearQuant(weight_scale=pack.scale_from_amax(amax.reshape(n), pack.INT8_MAX),
                           group_size=k, weight=lin.weight.detach().float().cpu(),
                           pre_quant_scale=pqs)
    if quant == "int8_wo":
        return LinearQuant(weight_scale=pack.scale_from_amax(amax.reshape(n), pack.INT8_MAX),
                           group_size=k)
