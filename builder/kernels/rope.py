"""RoPE fused with the paged KV-cache write: the prologue of the attention op.

Reference: kiln.builder.ops.rope.apply_rope (HuggingFace rotate-half RoPE; the per-pair
frequencies, llama3/linear scaling included, come from kiln.builder.ops.rope.inv_freq and are
uploaded as a small table) and kiln.builder.ops.attention.write_kv. The angle is
float32(position) * inv_freq exactly as transformers computes it; tl.cos/tl.sin lower to
libdevice's accurate __nv_cosf/__nv_sinf (full range reduction), so large positions stay exact. One program handles one token: it rotates the
token's q heads into `q_out`, rotates its k heads and writes k and v to the cache slot
slot_mapping[token] (cache layout [num_blocks, num_kv_heads, tokens_per_block, head_dim] per
layer and half). Slots < 0 are skipped.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.norm import row_warps
from kiln.builder.kernels.spec import pow2


@triton.jit
def _rotate(src_ptr, dst_ptr, i, c, s, HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
            HEAD_DIM: tl.constexpr, DST_HEAD_STRIDE: tl.constexpr, ROPE: tl.constexpr):
    heads = tl.arange(0, HEADS_PAD)
    mask = (heads[:, None] < HEADS) & (i[None, :] < HEAD_DIM // 2)
    src = heads[:, None] * HEAD_DIM + i[None, :]
    dst = heads[:, None] * DST_HEAD_STRIDE + i[None, :]
    x1 = tl.load(src_ptr + src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + src + HEAD_DIM // 2, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        y1 = x1 * c[None, :] - x2 * s[None, :]
        y2 = x2 * c[None, :] + x1 * s[None, :]
    else:
        y1 = x1
        y2 = x2
    tl.store(dst_ptr + dst, y1.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst_ptr + dst + HEAD_DIM // 2, y2.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rope_kv_kernel(q_out_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, positions_ptr,
                   slot_ptr, inv_freq_ptr, Q_STRIDE: tl.constexpr, Q_OUT_STRIDE: tl.constexpr,
                   K_STRIDE: tl.constexpr, V_STRIDE: tl.constexpr, NQ: tl.constexpr,
                   NKV: tl.constexpr, HEAD_DIM: tl.constexpr, NQ_PAD: tl.constexpr,
                   NKV_PAD: tl.constexpr, HALF_PAD: tl.constexpr, TPB: tl.constexpr,
                   ROPE: tl.constexpr, WRITE_Q: tl.constexpr, WRITE_KV: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, HALF_PAD)
    if ROPE:
        pos = tl.load(positions_ptr + tok).to(tl.float32)
        angle = pos * tl.load(inv_freq_ptr + i, mask=i < HEAD_DIM // 2, other=0.0)
        c = tl.cos(angle)
        s = tl.sin(angle)
    else:
        c = tl.zeros([HALF_PAD], dtype=tl.float32)
        s = tl.zeros([HALF_PAD], dtype=tl.float32)
    if WRITE_Q:
        _rotate(q_ptr + tok * Q_STRIDE, q_out_ptr + tok * Q_OUT_STRIDE, i, c, s, NQ, NQ_PAD,
                HEAD_DIM, HEAD_DIM, ROPE)
    if WRITE_KV:
        slot = tl.load(slot_ptr + tok)
        if slot >= 0:
            base = (slot // TPB) * (NKV * TPB * HEAD_DIM) + (slot % TPB) * HEAD_DIM
            _rotate(k_ptr + tok * K_STRIDE, k_cache_ptr + base, i, c, s, NKV, NKV_PAD, HEAD_DIM,
                    TPB * HEAD_DIM, ROPE)
            _rotate(v_ptr + tok * V_STRIDE, v_cache_ptr + base, i, c, s, NKV, NKV_PAD, HEAD_DIM,
                    TPB * HEAD_DIM, False)


def _warps(nq: int, head_dim: int) -> int:
    return row_warps(pow2(nq) * pow2(head_dim))


def _constexprs(nq, nkv, head_dim, tpb, q_stride, q_out_stride, k_stride, v_stride, rope,
                write_q, write_kv) -> dict:
    return dict(Q_STRIDE=q_stride, Q_OUT_STRIDE=q_out_stride, K_STRIDE=k_stride,
                V_STRIDE=v_stride, NQ=nq, NKV=nkv, HEAD_DIM=head_dim, NQ_PAD=pow2(nq),
                NKV_PAD=pow2(nkv), HALF_PAD=pow2(head_dim // 2), TPB=tpb, ROPE=rope,
                WRITE_Q=write_q, WRITE_KV=write_kv)


def inv_freq_table(rope: dict) -> list[float]:
    from kiln.builder.ops.rope import inv_freq
    return inv_freq(rope["head_dim"], rope["theta"], rope.get("scaling")).tolist()


# -- lowering -----------------------------------------------------------------------------------

def plan_rope_kv(ctx, *, q, q_out, k, v, layer: int, nq: int, nkv: int, head_dim: int,
                 rope: dict | None) -> None:
    """The attention prologue: RoPE on q (into q_out) and k, k/v into the cache of `layer`.
    Without rope, only the cache write (q stays where it is)."""
    table = ctx.const("float32", inv_freq_table(rope)) if rope else ctx.ptr("positions")
    q_out_ptr = ctx.ptr(q_out) if rope else ctx.ptr(q)
    ctx.launch(rope_kv_kernel, grid=("T",), num_warps=_warps(nq, head_dim),
               args=dict(q_out_ptr=q_out_ptr, q_ptr=ctx.ptr(q), k_ptr=ctx.ptr(k),
                         v_ptr=ctx.ptr(v), k_cache_ptr=ctx.kv(layer, 0),
                         v_cache_ptr=ctx.kv(layer, 1), positions_ptr=ctx.ptr("positions"),
                         slot_ptr=ctx.ptr("slot_mapping"), inv_freq_ptr=table),
               constexprs=_constexprs(nq, nkv, head_dim, ctx.tokens_per_block,
                                      ctx.row_stride(q), ctx.row_stride(q_out if rope else q),
                                      ctx.row_stride(k), ctx.row_stride(v), bool(rope),
                                      bool(rope), True))


def plan_rope(node, ctx):
    """The standalone rope op (when not folded into attention): x -> out, no cache write."""
    (x, positions), (out,) = node.inputs, node.outputs
    hd = node.attrs["head_dim"]
    heads = ctx.width(x) // hd
    table = ctx.const("float32", inv_freq_table(node.attrs))
    ctx.launch(rope_kv_kernel, grid=(ctx.rows(out),), num_warps=_warps(heads, hd),
               args=dict(q_out_ptr=ctx.ptr(out), q_ptr=ctx.ptr(x), k_ptr=ctx.ptr(x),
                         v_ptr=ctx.ptr(x), k_cache_ptr=ctx.ptr(x), v_cache_ptr=ctx.ptr(x),
                         positions_ptr=ctx.ptr(positions), slot_ptr=ctx.ptr("slot_mapping"),
                         inv_freq_ptr=table),
               constexprs=_constexprs(heads, 1, hd, 1, ctx.row_stride(x), ctx.row_stride(out),
                                      0, 0, True, True, False))


# -- direct launches ----------------------------------------------------------------------------

def rope_kv(q, k, v, positions, slot_mapping, k_cache, v_cache, inv_freq, head_dim: int,
            rope: bool = True):
    """Rotates q (returned, contiguous) and k; writes k, v into k_cache/v_cache
    ([num_blocks, num_kv_heads, tokens_per_block, head_dim] each)."""
    nq, nkv = q.shape[1] // head_dim, k.shape[1] // head_dim
    q_out = q.new_empty(q.shape)
    direct(rope_kv_kernel, q)[(q.shape[0],)](
        q_out, q, k, v, k_cache, v_cache, positions, slot_mapping, inv_freq,
        **_constexprs(nq, nkv, head_dim, k_cache.shape[2], q.stride(0), q_out.stride(0),
                      k.stride(0), v.stride(0), rope, True, True),
        num_warps=_warps(nq, head_dim))
    return q_out
