"""RoPE fused with the paged KV-cache write: the prologue of the attention op (its own kernel
before a prefill; its functions, rope_angles, rotate_heads and write_kv_token, also make the
decode kernel's prologue, attention.py).

Reference: kiln.builder.ops.rope.apply_rope (HuggingFace rotate-half RoPE; the per-pair
frequencies, llama3/linear scaling included, come from kiln.builder.ops.rope.inv_freq and are
uploaded as a small table) and kiln.builder.ops.attention.write_kv. The angle is
float32(position) * inv_freq exactly as transformers computes it; tl.cos/tl.sin lower to
libdevice's accurate __nv_cosf/__nv_sinf (full range reduction), so large positions stay
exact. One program handles one token: it rotates the token's q heads into `q_out`, rotates its
k heads and writes k and v to the cache slot slot_mapping[token] (cache layout [num_blocks,
num_kv_heads, tokens_per_block, head_dim] per layer and half, but for an 8-bit cache's V:
v_transposed). Slots < 0 are skipped.

A quantized cache (KV_QUANT 1: float8_e4m3fn, 2: int8) stores the codes of
kiln.builder.ops.quant.quantize_kv bit for bit given the same k and v values: the rotated k is
rounded to the model dtype first (the reference rotates in it), then multiplied by the
correctly rounded float32 reciprocal of its static per-layer scale (k_scale_ptr / v_scale_ptr,
float32 [1]); fp8 saturates at +-448 and rounds to nearest even, int8 rounds half to even and
clamps to [-128, 127].
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.norm import row_warps
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.rounding import e4m3_grid
from kiln.builder.kernels.spec import I32, pow2


KV_QUANT = {"float8_e4m3fn": 1, "int8": 2}  # the KV_QUANT constexpr of a cache dtype (else 0)


def kv_quant(dtype) -> int:
    """KV_QUANT of a cache dtype: an IR dtype name or a torch dtype."""
    return KV_QUANT.get(str(dtype).removeprefix("torch."), 0)


def v_transposed(dtype) -> bool:
    """Whether a cache of `dtype` stores V transposed in each block: [num_blocks, num_kv_heads,
    head_dim, tokens_per_block], so the attention kernels read an 8-bit V tile keys-contiguous,
    the layout in which its values convert straight into the P @ V product's operand (K is
    keys-contiguous already, as [tokens, head_dim] is the Q @ K^T operand's own). 16-bit caches
    keep [num_blocks, num_kv_heads, tokens_per_block, head_dim] for both halves."""
    return kv_quant(dtype) != 0


def check_cache_layout(k_cache, v_cache, head_dim: int) -> None:
    """Raises ValueError unless k_cache is [num_blocks, nkv, tokens_per_block, head_dim] and
    v_cache the same in the layout its dtype stores (v_cache_stored), both contiguous."""
    k_shape = tuple(k_cache.shape)
    transposed = v_transposed(v_cache.dtype)
    want = k_shape[:2] + k_shape[2:][::-1] if transposed else k_shape
    if (len(k_shape) != 4 or k_shape[3] != head_dim or tuple(v_cache.shape) != want
            or not (k_cache.is_contiguous() and v_cache.is_contiguous())):
        v_form = "[num_blocks, nkv, head_dim, tokens_per_block]" if transposed else "K's"
        raise ValueError(
            f"KV cache planes of shapes {k_shape} and {tuple(v_cache.shape)} ({v_cache.dtype}); "
            f"expected contiguous [num_blocks, nkv, tokens_per_block, {head_dim}] and V as "
            f"{v_form}: pass V through v_cache_stored")


def v_cache_view(v_stored):
    """A cache's V plane as [num_blocks, num_kv_heads, tokens_per_block, head_dim], whatever
    its layout (a view: writes reach the cache)."""
    return v_stored.transpose(-1, -2) if v_transposed(v_stored.dtype) else v_stored


def v_cache_stored(v):
    """The V plane [num_blocks, num_kv_heads, tokens_per_block, head_dim] in the layout the
    kernels read (a copy when it is transposed, else v itself)."""
    return v.transpose(-1, -2).contiguous() if v_transposed(v.dtype) else v


@triton.jit
def _quantize(y, inv_scale, SRC_TY: tl.constexpr, QUANT: tl.constexpr):
    """quantize_kv's value before the final cast: fp8 saturated; int8 rounded and clamped."""
    x = y.to(SRC_TY).to(tl.float32) * inv_scale
    if QUANT == 1:
        return e4m3_grid(tl.minimum(tl.maximum(x, -448.0), 448.0))
    else:
        # Round half to even without libdevice (the interpreter has none); clamping first is
        # the same as clamping after, and keeps every step below exact in float32.
        x = tl.minimum(tl.maximum(x, -128.0), 127.0)
        r = tl.floor(x)
        f = x - r
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where((f > 0.5) | ((f == 0.5) & odd), r + 1.0, r)


@triton.jit
def rotate_heads(src_ptr, dst_ptr, i, c, s, inv_scale, HEADS: tl.constexpr,
                 HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DST_HEAD_STRIDE: tl.constexpr,
                 ROPE: tl.constexpr, QUANT: tl.constexpr, DST_STRIDE: tl.constexpr = 1):
    """HEADS heads of one token, src (contiguous heads) -> dst (a head's values DST_STRIDE
    apart), rotated with (c, s) when ROPE, quantized (times inv_scale) when QUANT."""
    heads = tl.arange(0, HEADS_PAD)
    mask = (heads[:, None] < HEADS) & (i[None, :] < HEAD_DIM // 2)
    src = heads[:, None] * HEAD_DIM + i[None, :]
    dst = heads[:, None] * DST_HEAD_STRIDE + i[None, :] * DST_STRIDE
    x1 = tl.load(src_ptr + src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src_ptr + src + HEAD_DIM // 2, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        # Explicit fused multiply-adds: left to the compiler, which product of a rotation is
        # fused depends on the kernel's layout, and rope_kv_kernel and the decode kernel's
        # prologue (on 2 or on 4 warps) would differ in the last bit now and then.
        y1 = tl.fma(x1, c[None, :], -(x2 * s[None, :]))
        y2 = tl.fma(x2, c[None, :], x1 * s[None, :])
    else:
        y1 = x1
        y2 = x2
    if QUANT != 0:
        y1 = _quantize(y1, inv_scale, src_ptr.dtype.element_ty, QUANT)
        y2 = _quantize(y2, inv_scale, src_ptr.dtype.element_ty, QUANT)
    tl.store(dst_ptr + dst, y1.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst_ptr + dst + (HEAD_DIM // 2) * DST_STRIDE, y2.to(dst_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def rope_kv_kernel(q_out_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, positions_ptr,
                   slot_ptr, inv_freq_ptr, k_scale_ptr, v_scale_ptr, first_token,
                   Q_STRIDE: tl.constexpr, Q_OUT_STRIDE: tl.constexpr,
                   K_STRIDE: tl.constexpr, V_STRIDE: tl.constexpr,
                   NQ: tl.constexpr, NKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                   NQ_PAD: tl.constexpr, NKV_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
                   TPB: tl.constexpr, ROPE: tl.constexpr, WRITE_Q: tl.constexpr,
                   WRITE_KV: tl.constexpr, KV_QUANT: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    tok = (tl.program_id(0) + first_token).to(tl.int64)
    i, c, s = rope_angles(positions_ptr, inv_freq_ptr, tok, HEAD_DIM, HALF_PAD, ROPE)
    if WRITE_Q:
        rotate_heads(q_ptr + tok * Q_STRIDE, q_out_ptr + tok * Q_OUT_STRIDE, i, c, s, 1.0, NQ,
                     NQ_PAD, HEAD_DIM, HEAD_DIM, ROPE, 0)
    if WRITE_KV:
        write_kv_token(k_ptr + tok * K_STRIDE, v_ptr + tok * V_STRIDE, k_cache_ptr, v_cache_ptr,
                       tl.load(slot_ptr + tok), k_scale_ptr, v_scale_ptr, i, c, s, NKV, NKV_PAD,
                       NKV, HEAD_DIM, TPB, ROPE, KV_QUANT)


@triton.jit
def rope_angles(positions_ptr, inv_freq_ptr, tok, HEAD_DIM: tl.constexpr,
                HALF_PAD: tl.constexpr, ROPE: tl.constexpr):
    """(i, cos, sin) of token `tok`'s angles, i = 0..HALF_PAD-1 (zeros without ROPE)."""
    i = tl.arange(0, HALF_PAD)
    if ROPE:
        pos = tl.load(positions_ptr + tok).to(tl.float32)
        angle = pos * tl.load(inv_freq_ptr + i, mask=i < HEAD_DIM // 2, other=0.0)
        c = tl.cos(angle)
        s = tl.sin(angle)
    else:
        c = tl.zeros([HALF_PAD], dtype=tl.float32)
        s = tl.zeros([HALF_PAD], dtype=tl.float32)
    return i, c, s


@triton.jit
def write_kv_token(k_src, v_src, k_cache_ptr, v_cache_ptr, slot, k_scale_ptr, v_scale_ptr, i, c,
                   s, HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, NKV: tl.constexpr,
                   HEAD_DIM: tl.constexpr, TPB: tl.constexpr, ROPE: tl.constexpr,
                   KV_QUANT: tl.constexpr):
    """One token's HEADS kv heads from k_src / v_src (k rotated) into cache slot `slot`
    (skipped when < 0); the cache pointers are those of the first of the heads. An 8-bit
    cache's V is stored transposed in each block (v_transposed)."""
    if slot >= 0:
        block = (slot // TPB) * (NKV * TPB * HEAD_DIM)
        base = block + (slot % TPB) * HEAD_DIM
        if KV_QUANT != 0:
            # torch.reciprocal's correctly rounded 1 / scale (a plain division is approximate)
            k_inv = tl.math.div_rn(1.0, tl.load(k_scale_ptr))
            v_inv = tl.math.div_rn(1.0, tl.load(v_scale_ptr))
        else:
            k_inv = 1.0
            v_inv = 1.0
        rotate_heads(k_src, k_cache_ptr + base, i, c, s, k_inv, HEADS, HEADS_PAD, HEAD_DIM,
                     TPB * HEAD_DIM, ROPE, KV_QUANT)
        # V transposed: a slot's values TPB apart from its own offset in the block
        V_SLOT: tl.constexpr = 1 if KV_QUANT != 0 else HEAD_DIM
        V_STRIDE: tl.constexpr = TPB if KV_QUANT != 0 else 1
        rotate_heads(v_src, v_cache_ptr + block + (slot % TPB) * V_SLOT, i, c, s, v_inv, HEADS,
                     HEADS_PAD, HEAD_DIM, TPB * HEAD_DIM, False, KV_QUANT, V_STRIDE)


def _warps(nq: int, head_dim: int) -> int:
    return row_warps(pow2(nq) * pow2(head_dim))


def _constexprs(nq, nkv, head_dim, tpb, q_stride, q_out_stride, k_stride, v_stride, rope,
                write_q, write_kv, quant=0) -> dict:
    return dict(Q_STRIDE=q_stride, Q_OUT_STRIDE=q_out_stride, K_STRIDE=k_stride,
                V_STRIDE=v_stride, NQ=nq, NKV=nkv, HEAD_DIM=head_dim, NQ_PAD=pow2(nq),
                NKV_PAD=pow2(nkv), HALF_PAD=pow2(head_dim // 2), TPB=tpb, ROPE=rope,
                WRITE_Q=write_q, WRITE_KV=write_kv, KV_QUANT=quant)


def inv_freq_table(rope: dict) -> list[float]:
    from kiln.builder.ops.rope import inv_freq_of
    return inv_freq_of(rope).tolist()


# -- lowering -----------------------------------------------------------------------------------

def rope_table(ctx, rope: dict | None):
    """The inv_freq table a kernel reads for `rope` (without rope, any pointer: never read)."""
    return ctx.const("float32", inv_freq_table(rope)) if rope else ctx.ptr("positions")


def plan_rope_kv(ctx, *, q, q_out, k, v, layer: int, nq: int, nkv: int, head_dim: int,
                 rope: dict | None, kv_scales: tuple[str, str] | None = None,
                 first_token: str = "0") -> None:
    """The attention prologue: RoPE on q (into q_out) and k, k/v into the cache of `layer`, for
    the step's tokens from `first_token` (a formula) on. Without rope, only the cache write (q
    stays where it is). kv_scales: the k_scale and v_scale values of a quantized cache."""
    table = rope_table(ctx, rope)
    q_out_ptr = ctx.ptr(q_out) if rope else ctx.ptr(q)
    k_cache, v_cache = ctx.kv(layer, 0), ctx.kv(layer, 1)
    quant = kv_quant(k_cache.dtype)
    if bool(quant) != bool(kv_scales):
        raise ValueError(f"layer {layer}: a {k_cache.dtype} KV cache with kv_scales {kv_scales}; "
                         "a quantized cache needs k_scale and v_scale, and only it")
    k_scale, v_scale = map(ctx.ptr, kv_scales) if quant else (k_cache, v_cache)
    ctx.launch(rope_kv_kernel, grid=(f"T - {first_token}",), num_warps=_warps(nq, head_dim),
               args=dict(q_out_ptr=q_out_ptr, q_ptr=ctx.ptr(q), k_ptr=ctx.ptr(k),
                         v_ptr=ctx.ptr(v), k_cache_ptr=k_cache, v_cache_ptr=v_cache,
                         positions_ptr=ctx.ptr("positions"), slot_ptr=ctx.ptr("slot_mapping"),
                         inv_freq_ptr=table, k_scale_ptr=k_scale, v_scale_ptr=v_scale,
                         first_token=I32(first_token)),
               constexprs=_constexprs(nq, nkv, head_dim, ctx.tokens_per_block,
                                      ctx.row_stride(q), ctx.row_stride(q_out if rope else q),
                                      ctx.row_stride(k), ctx.row_stride(v), bool(rope),
                                      bool(rope), True, quant))


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
                         inv_freq_ptr=table, k_scale_ptr=ctx.ptr(x), v_scale_ptr=ctx.ptr(x),
                         first_token=I32(0)),
               constexprs=_constexprs(heads, 1, hd, 1, ctx.row_stride(x), ctx.row_stride(out),
                                      0, 0, True, True, False))


# -- direct launches ----------------------------------------------------------------------------

def rope_kv(q, k, v, positions, slot_mapping, k_cache, v_cache, inv_freq, head_dim: int,
            rope: bool = True, k_scale=None, v_scale=None, first_token: int = 0, q_out=None):
    """Rotates q (into q_out, returned; by default a new tensor) and k; writes k, v into
    k_cache/v_cache ([num_blocks, num_kv_heads, tokens_per_block, head_dim] each, an 8-bit
    v_cache as v_transposed stores it: see v_cache_stored), quantized with k_scale / v_scale
    (float32 [1]) when the cache is float8_e4m3fn or int8. Only the tokens from first_token
    on: q_out's rows before it are left as they are."""
    nq, nkv = q.shape[1] // head_dim, k.shape[1] // head_dim
    quant = kv_quant(k_cache.dtype)
    check_cache_layout(k_cache, v_cache, head_dim)
    q_out = q.new_empty(q.shape) if q_out is None else q_out
    if q.shape[0] > first_token:
        direct(rope_kv_kernel, q)[(q.shape[0] - first_token,)](
            q_out, q, k, v, k_cache, v_cache, positions, slot_mapping, inv_freq,
            k_scale if quant else k_cache, v_scale if quant else v_cache, first_token,
            **_constexprs(nq, nkv, head_dim, k_cache.shape[2], q.stride(0), q_out.stride(0),
                          k.stride(0), v.stride(0), rope, True, True, quant),
            num_warps=_warps(nq, head_dim))
    return q_out
