"""Pre-quantized HuggingFace checkpoints: modelopt FP8 exports, AutoAWQ (GEMM) and GPTQ INT4.

A recognised checkpoint reads like any other: `load("layers.0.q.weight")` gives the weight
dequantized to float. It is also its build's calibrator: its scales become the engine's and
its integer zero points the engine's float group offsets, (8 - zero) * scale (exact in a
float32 build; a 16-bit one stores both in its dtype, each rounded once), so re-quantizing a
dequantized weight gives back the checkpoint's nibbles
(fused q/k/v and gate/up of an FP8 checkpoint share the largest of their scales, as vLLM and
modelopt's own export do).

    modelopt FP8  <proj>.weight F8_E4M3 [N, K], .weight_scale F32 [], .input_scale F32 [],
                  self_attn.k_proj.k_scale / v_proj.v_scale F32 [] with an FP8 KV cache
    AutoAWQ GEMM  <proj>.qweight I32 [K, N/8], .qzeros I32 [K/G, N/8] (nibble order
                  0 2 4 6 1 3 5 7), .scales F16 [K/G, N]; w = (q - zero) * scale
    GPTQ          <proj>.qweight I32 [K/8, N], .qzeros I32 [K/G, N/8] (sequential nibbles,
                  zero - 1 in the v1 format), .scales F16 [K/G, N], .g_idx I32 [K]
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kiln.builder.errors import KilnError
from kiln.quantize import pack

from .names import unwrapped

PARTS = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}  # fused weights of the passes
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ packs columns col*8 + AWQ_ORDER[i] in nibble i
SUPPORTED = "modelopt FP8 exports and AutoAWQ (GEMM) / GPTQ 4-bit checkpoints"
_QUANT_TENSOR = re.compile(r"^(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+?)_proj\."
                           r"(qweight|qzeros|scales|g_idx|weight_scale|input_scale|"
                           r"k_scale|v_scale)$")
_ATTN_KV_SCALE = re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.(k_scale|v_scale)$")


def _unpack_int32(packed: torch.Tensor, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """int32 [R, C] -> int64 [R, C * 8]: nibble i of word c is element c * 8 + order[i]."""
    out = torch.empty(*packed.shape[:-1], packed.shape[-1], 8, dtype=torch.int64)
    for i, position in enumerate(order):
        out[..., position] = (packed.long() >> (4 * i)) & 0xF
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 8)


def recognise(directory: Path, hf_config: dict) -> "Prequantized | None":
    """The checkpoint's quantization format, None if it is not pre-quantized, or a KilnError."""
    quant = hf_config.get("quantization_config")
    extra = directory / "hf_quant_config.json"  # modelopt exports before quantization_config
    if not quant and extra.is_file():
        try:
            quant = dict(json.loads(extra.read_text())["quantization"], quant_method="modelopt")
        except (ValueError, KeyError, TypeError):
            raise KilnError(f"{extra} is not a modelopt quantization config; re-export the "
                            "checkpoint") from None
    if not quant:
        return None
    if not isinstance(quant, dict):
        quant = {"quant_method": "unknown"}
    method = str(quant.get("quant_method", "unknown")).lower()
    where = f"{directory} is a pre-quantized checkpoint ({method})"
    if method == "modelopt":
        algo, kv = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
        scheme = quant.get("kv_cache_scheme")  # how config.json's quantization_config says it
        if kv is None and isinstance(scheme, dict):
            is_fp8 = (scheme.get("type"), scheme.get("num_bits")) == ("float", 8)
            kv = "FP8" if is_fp8 else str(scheme)
        if algo != "FP8" or kv not in (None, "FP8"):
            raise KilnError(f"{where} with quant_algo {algo} and KV cache {kv}, which Kiln does "
                            f"not read; Kiln reads {SUPPORTED}")
        return Prequantized(method, "fp8", "fp8" if kv else "auto")
    if method in ("awq", "gptq"):
        bits = quant.get("bits", quant.get("w_bit"))
        group = quant.get("group_size", quant.get("q_group_size"))
        if bits != 4 or not isinstance(group, int) or group < 2:
            raise KilnError(f"{where} with bits {bits} and group_size {group}; Kiln reads 4-bit "
                            "checkpoints with a positive group_size")
        if method == "awq":
            version = str(quant.get("version", "gemm")).lower()
            if version != "gemm":
                raise KilnError(f"{where} in the {version} layout; Kiln reads AutoAWQ's GEMM "
                                "layout")
            return Prequantized(method, "int4_awq", "auto", group_size=group)
        if quant.get("desc_act"):
            raise KilnError(f"{where} with act-order (desc_act); Kiln reads GPTQ checkpoints "
                            "quantized with desc_act false")
        fmt = str(quant.get("checkpoint_format", "gptq")).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise KilnError(f"{where} in checkpoint_format {fmt}; Kiln reads gptq and gptq_v2")
        return Prequantized(method, "int4_gptq", "auto", group_size=group,
                            zeros_minus_one=fmt == "gptq")
    raise KilnError(f"{where}, a format Kiln does not read; Kiln reads {SUPPORTED}, or build "
                    "from the unquantized checkpoint and let engine-build quantize it")


@dataclass(slots=True)
class Prequantized:
    """A recognised pre-quantized checkpoint: its mode, and the build's calibrator."""
    method: str  # quant_method: modelopt, awq or gptq
    quant: str
    kv_cache_dtype: str
    group_size: int = 0
    zeros_minus_one: bool = False
    dequantized: set[str] = field(default_factory=set)  # canonical names load() dequantizes
    ckpt: object = None
    _result: object = None

    def canonical(self, hf_name: str) -> str | None:
        """Canonical names of the quantization tensors: layers.{i}.{proj}.{qweight, scales,
        ...}, and layers.{i}.k_scale / v_scale."""
        hf_name = unwrapped(hf_name)
        match = _QUANT_TENSOR.match(hf_name) or _ATTN_KV_SCALE.match(hf_name)
        if not match:
            return None
        layer, *rest = match.groups()
        if rest[-1] in ("k_scale", "v_scale"):
            return f"layers.{layer}.{rest[-1]}"
        return f"layers.{layer}.{rest[0]}.{rest[1]}" if rest[0] in LINEARS else None

    def attach(self, ckpt, entry_type) -> None:
        """Checks the checkpoint has every tensor its format needs and offers each quantized
        weight under its canonical name with its logical shape."""
        self.ckpt = ckpt
        layers = int(ckpt.hf_config.get("num_hidden_layers", 0))
        entries = ckpt._names()
        for layer in range(layers):
            for part in LINEARS:
                name = f"layers.{layer}.{part}"
                if self.quant == "fp8":
                    need = [f"{name}.weight", f"{name}.weight_scale", f"{name}.input_scale"]
                else:
                    need = [f"{name}.qweight", f"{name}.qzeros", f"{name}.scales"]
                missing = [n for n in need if n not in entries]
                if missing:
                    raise KilnError(f"{ckpt.path} is a pre-quantized checkpoint ({self.method}) "
                                    f"but lacks {missing[0]}; re-download it, or build from the "
                                    "unquantized checkpoint")
                if self.quant == "fp8":
                    if entries[f"{name}.weight"].dtype != torch.float8_e4m3fn:
                        raise KilnError(f"{ckpt.path} is a modelopt FP8 export but {name}.weight "
                                        f"is {entries[f'{name}.weight'].dtype}; re-export it")
                    entries[f"{name}.weight_fp8"] = entries[f"{name}.weight"]  # the raw bytes
                else:
                    q, s = entries[f"{name}.qweight"], entries[f"{name}.scales"]
                    n_out, k = s.shape[1], s.shape[0] * self.group_size
                    entries[f"{name}.weight"] = entry_type(q.file, q.hf_name, (n_out, k), s.dtype)
                self.dequantized.add(f"{name}.weight")
        if self.kv_cache_dtype == "fp8":
            for layer in range(layers):
                for half in ("k_scale", "v_scale"):
                    if f"layers.{layer}.{half}" not in entries:
                        raise KilnError(f"{ckpt.path} declares an FP8 KV cache but lacks "
                                        f"layers.{layer}.{half}; re-export the checkpoint")

    # -- reading ---------------------------------------------------------------------------
    def _int4(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q int64 [N, K], scales float32 [N, K / G], zeros int64 [N, K / G])."""
        load = self.ckpt.load
        qweight, qzeros = load(f"{name}.qweight"), load(f"{name}.qzeros")
        scales = load(f"{name}.scales").float()
        if self.quant == "int4_awq":
            q, zeros = _unpack_int32(qweight, AWQ_ORDER), _unpack_int32(qzeros, AWQ_ORDER)
        else:
            q = _unpack_int32(qweight.T.contiguous()).T  # [K/8, N] -> [K, N]
            zeros = _unpack_int32(qzeros) + (1 if self.zeros_minus_one else 0)
            k = q.shape[0]
            g_idx = f"{name}.g_idx"
            if g_idx in self.ckpt and not torch.equal(
                    load(g_idx).long(), torch.arange(k) // self.group_size):
                raise KilnError(f"{self.ckpt.path}: {g_idx} is not in order (act-order GPTQ); "
                                "Kiln reads GPTQ checkpoints quantized with desc_act false")
        if q.shape[0] != scales.shape[0] * self.group_size:
            raise KilnError(f"{self.ckpt.path}: {name}.qweight has {q.shape[0]} input rows, its "
                            f"scales cover {scales.shape[0]} groups of {self.group_size}; "
                            "re-download the checkpoint")
        return q.T, scales.T.contiguous(), zeros.T.contiguous()

    def load(self, name: str) -> torch.Tensor:
        """The float32 weight a quantized canonical weight stands for."""
        linear = name.rsplit(".", 1)[0]
        if self.quant == "fp8":
            w = self.ckpt.load(f"{linear}.weight_fp8").float()
            return w * self.ckpt.load(f"{linear}.weight_scale").float()
        q, scales, zeros = self._int4(linear)
        group = self.group_size
        return ((q - zeros.repeat_interleave(group, 1)).float()
                * scales.repeat_interleave(group, 1))

    # -- the build's calibrator -------------------------------------------------------------
    def calibrate(self, graph, build):
        from kiln.quantize.calibration import Calibration, LinearQuant, quantized_linears

        if self._result is not None:
            return self._result
        result = Calibration()
        load = self.ckpt.load
        for node in quantized_linears(graph):
            prefix, kind = node.inputs[1].rsplit(".", 2)[:2]
            names = [f"{prefix}.{p}" for p in PARTS.get(kind, (kind,))]
            if any(f"{n}.weight" not in self.dequantized for n in names):
                continue
            if self.quant == "fp8":
                result.linears[node.inputs[1]] = LinearQuant(
                    weight_scale=torch.stack([load(f"{n}.weight_scale").float().reshape(())
                                              for n in names]).max().reshape(1),
                    input_scale=torch.stack([load(f"{n}.input_scale").float().reshape(())
                                             for n in names]).max().reshape(1))
                continue
            parts = [self._int4(n) for n in names]
            zeros = torch.cat([z for _, _, z in parts])
            scales = torch.cat([s for _, s, _ in parts])
            symmetric = bool((zeros == pack.INT4_SYMMETRIC_ZERO).all())
            result.linears[node.inputs[1]] = LinearQuant(
                weight_scale=scales, group_size=self.group_size,
                offsets=None if symmetric else pack.offsets_from_zeros(zeros, scales))
        if self.kv_cache_dtype == "fp8":
            for node in graph.nodes:
                if node.op == "attention":
                    layer = node.attrs["layer"]
                    result.kv_scales[layer] = (load(f"layers.{layer}.k_scale").float().reshape(1),
                                               load(f"layers.{layer}.v_scale").float().reshape(1))
        self._result = result
        return result
