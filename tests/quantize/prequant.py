"""Pre-quantized checkpoints written here from tiny HF models, in the layouts AutoAWQ and
AutoGPTQ save (packing code follows theirs), plus the float checkpoint they dequantize to."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from kiln_testing import make_tiny_checkpoint

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_int32(values: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """int [R, C * 8] of 0..15 -> int32 [R, C]: element c*8 + order[i] in nibble i of word c."""
    v = values.long().reshape(*values.shape[:-1], -1, 8)
    packed = torch.zeros(v.shape[:-1], dtype=torch.int64)
    for i, position in enumerate(order):
        packed |= v[..., position] << (4 * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def quantize_groups(w: torch.Tensor, group: int, symmetric: bool):
    """AutoAWQ's pseudo_quantize_tensor / AutoGPTQ's quantizer: w [N, K] ->
    (q [N, K] 0..15, scales fp16 [N, K/G], zeros [N, K/G])."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    if symmetric:
        scales = (g.abs().amax(-1) / 7.5).clamp(min=1e-5)  # AutoGPTQ sym: (max - min) / 15
        zeros = torch.full_like(scales, 8)
    else:
        hi, lo = g.amax(-1), g.amin(-1)
        scales = ((hi - lo).clamp(min=1e-5) / 15)
        zeros = torch.round(-lo / scales).clamp(0, 15)
    scales = scales.half().float()  # stored as fp16: quantize with what is stored
    q = (torch.round(g / scales[..., None]) + zeros[..., None]).clamp(0, 15)
    return q.reshape(n, k).long(), scales.half(), zeros.long()


def dequantize(q, scales, zeros, group):
    return ((q - zeros.repeat_interleave(group, 1)).float()
            * scales.float().repeat_interleave(group, 1))


def write_int4_checkpoint(arch: str, root: Path, method: str, group: int = 32, seed: int = 0,
                          symmetric: bool = False) -> tuple[Path, Path]:
    """(pre-quantized dir, float dir with the same weights dequantized)."""
    src = make_tiny_checkpoint(arch, root / "src", seed=seed)
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    quantized, dequantized = {}, {}
    for name, tensor in state.items():
        proj = name.rsplit(".", 2)
        if len(proj) == 3 and proj[1] in PROJ and proj[2] == "weight":
            q, scales, zeros = quantize_groups(tensor, group, symmetric)
            base = name[: -len(".weight")]
            dequantized[name] = dequantize(q, scales, zeros, group)
            if method == "awq":  # [K, N/8] with AWQ's column order
                quantized[base + ".qweight"] = pack_int32(q.T, AWQ_ORDER)
                quantized[base + ".qzeros"] = pack_int32(zeros.T, AWQ_ORDER)
            else:  # GPTQ v1: [K/8, N] sequential along K; zeros stored minus one
                quantized[base + ".qweight"] = pack_int32(q).T.contiguous()
                quantized[base + ".qzeros"] = pack_int32((zeros - 1).T.contiguous())
                quantized[base + ".g_idx"] = torch.arange(q.shape[1], dtype=torch.int32) // group
            quantized[base + ".scales"] = scales.T.contiguous()
        else:
            quantized[name] = dequantized[name] = tensor
    config = json.loads((src / "config.json").read_text())
    outs = []
    for kind, tensors in (("pre", quantized), ("float", dequantized)):
        out = root / f"{method}-{kind}"
        out.mkdir(parents=True)
        for file in src.iterdir():
            if file.name not in ("model.safetensors", "config.json"):
                (out / file.name).write_bytes(file.read_bytes())
        cfg = dict(config)
        if kind == "pre":
            cfg["quantization_config"] = (
                {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                 "version": "gemm"} if method == "awq" else
                {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False,
                 "sym": symmetric, "checkpoint_format": "gptq"})
        (out / "config.json").write_text(json.dumps(cfg))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
        outs.append(out)
    return outs[0], outs[1]
