"""Paged attention over the KV cache, with the KV write (and optionally RoPE) folded in.

Inputs: q, k, v, positions, slot_mapping, block_tables, context_lens, query_start.
Each step token's k and v are written to its slot; then every query token at position p
attends causally to its own sequence's cached positions 0..p; with attr `window` W (a sliding
window), to positions p - W + 1..p only, as HF's sliding-window layers do. With attr
`softcap` C (Gemma 2), each scaled score s becomes C * tanh(s / C) before the softmax.

A quantized KV cache (attr kv_dtype "float8_e4m3fn" or "int8") adds two inputs, k_scale and
v_scale (float32 [1] each): k and v are quantized with them on the way in and dequantized on
the way out (kiln.builder.ops.quant.quantize_kv / dequantize_kv).

With attr out_qdtype "float8_e4m3fn" (quantize_fuse_producers: the attention output's FP8
quantization for the o-projection's linear_fp8) a last input, the static scale (float32 [1]),
and a second output, the output quantized as quantize_fp8 quantizes it, are added; the first
output stays the unquantized one (on the GPU, the rotated q's buffer).
"""
from __future__ import annotations

import torch

from kiln.builder.ops import register
from kiln.builder.ops._shapes import expect, of
from kiln.builder.ops.quant import dequantize_kv, quantize_activation, quantize_kv
from kiln.builder.ops.rope import apply_rope

STEP_INPUTS = ("positions", "slot_mapping", "block_tables", "context_lens", "query_start")


def _infer(node, graph):
    a = node.attrs
    dtype, qshape = of(graph, node.inputs[0])
    expect(qshape[-1] == a["num_heads"] * a["head_dim"], node, "q width != num_heads * head_dim")
    for name in node.inputs[1:3]:
        expect(of(graph, name)[1][-1] == a["num_kv_heads"] * a["head_dim"], node,
               f"{name} width != num_kv_heads * head_dim")
    expect(a["num_heads"] % a["num_kv_heads"] == 0, node, "num_heads not a multiple of num_kv_heads")
    quant_out = bool(a.get("out_qdtype"))
    if a.get("kv_dtype"):
        expect(a["kv_dtype"] in ("float8_e4m3fn", "int8"), node, f"kv_dtype {a['kv_dtype']!r}")
        expect(len(node.inputs) == 10 + quant_out and all(
            of(graph, n) == ("float32", (1,)) for n in node.inputs[8:10]), node,
            "a quantized KV cache needs k_scale and v_scale inputs, float32 [1] each")
    else:
        expect(len(node.inputs) == 8 + quant_out, node, f"{len(node.inputs)} inputs")
    if not quant_out:
        return [(dtype, qshape)]
    expect(a["out_qdtype"] == "float8_e4m3fn", node, f"out_qdtype {a['out_qdtype']!r}")
    expect(of(graph, node.inputs[-1]) == ("float32", (1,)), node,
           "the output's FP8 scale must be a float32 [1]")
    return [(dtype, qshape), ("float8_e4m3fn", qshape)]


def write_kv(cache: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor, kv_quant: tuple | None = None) -> None:
    """kv_quant: (kv_dtype, k_scale, v_scale) for a quantized cache."""
    tpb, nkv, hd = cache.shape[4], cache.shape[3], cache.shape[5]
    slots = slot_mapping.long()
    blocks, offsets = slots // tpb, slots % tpb
    if kv_quant:
        k, v = quantize_kv(k, kv_quant[0], kv_quant[1]), quantize_kv(v, kv_quant[0], kv_quant[2])
    cache[layer, 0, blocks, :, offsets, :] = k.reshape(-1, nkv, hd).to(cache.dtype)
    cache[layer, 1, blocks, :, offsets, :] = v.reshape(-1, nkv, hd).to(cache.dtype)


def read_kv(cache: torch.Tensor, layer: int, block_row: torch.Tensor, length: int):
    """The first `length` cached keys and values of one sequence: [length, kv_heads, hd] each."""
    tpb = cache.shape[4]
    blocks = block_row[: (length + tpb - 1) // tpb].long()
    k = cache[layer, 0, blocks].permute(0, 2, 1, 3).reshape(-1, cache.shape[3], cache.shape[5])
    v = cache[layer, 1, blocks].permute(0, 2, 1, 3).reshape(-1, cache.shape[3], cache.shape[5])
    return k[:length], v[:length]


def _reference(node, inputs, ctx):
    q, k, v, positions, slot_mapping, block_tables, context_lens, query_start = inputs[:8]
    a = node.attrs
    kv_quant = (a["kv_dtype"], *inputs[8:10]) if a.get("kv_dtype") else None
    if a.get("rope"):
        q = apply_rope(q, positions, a["rope"])
        k = apply_rope(k, positions, a["rope"])
    write_kv(ctx.kv_cache, a["layer"], k, v, slot_mapping, kv_quant)
    nq, nkv, hd = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    out = torch.empty_like(q)
    for b in range(context_lens.shape[0]):
        start, end = int(query_start[b]), int(query_start[b + 1])
        if end == start:
            continue
        keys, values = read_kv(ctx.kv_cache, a["layer"], block_tables[b], int(context_lens[b]))
        if kv_quant:
            keys, values = dequantize_kv(keys, kv_quant[1]), dequantize_kv(values, kv_quant[2])
        qs = q[start:end].reshape(end - start, nq, hd).float().transpose(0, 1)      # [nq, t, hd]
        ks = keys.float().repeat_interleave(nq // nkv, dim=1).transpose(0, 1)      # [nq, L, hd]
        vs = values.float().repeat_interleave(nq // nkv, dim=1).transpose(0, 1)
        scores = (qs @ ks.transpose(1, 2)) * a["scale"]
        if a.get("softcap"):
            scores = torch.tanh(scores / a["softcap"]) * a["softcap"]
        key_pos = torch.arange(keys.shape[0], device=positions.device)
        q_pos = positions[start:end].long()[:, None]
        mask = key_pos[None, :] > q_pos
        if a.get("window"):
            mask |= key_pos[None, :] <= q_pos - a["window"]
        scores = scores.masked_fill(mask[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = (probs @ vs).transpose(0, 1).reshape(end - start, nq * hd).to(q.dtype)
    if a.get("out_qdtype"):
        return [out, quantize_activation(out, a["out_qdtype"], inputs[-1])[0]]
    return [out]


register("attention", _infer, _reference)
