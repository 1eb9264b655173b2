"""Quantized GEMMs: linear_w8a8 (INT8 x INT8 -> INT32 tensor cores), linear_wo (weight-only
INT8 / INT4 dequantized in registers) and linear_fp8 (cuBLASLt FP8, run by the C++ executor,
with gemm.py's small-M alternatives).

Reference: kiln.builder.ops.quant (layouts: kiln.quantize.pack), out[M, N] = x[M, K] @ w.T.
  w8a8: acc = q @ w.T in int32 (exact), out = (acc.f32 * row_scale[m] * w_scale[n] + bias).
  wo:   wd = ((u - zero) * scale).to(dtype), x' = (x.f32 * pre_quant_scale).to(dtype),
        out = x' @ wd.T + bias with float32 accumulation (IEEE products for float32 builds).
An int4 byte holds elements 2j (low nibble) and 2j + 1 (high nibble) of a row, so the kernel
never interleaves nibbles: it multiplies the even columns of x by the low nibbles and the odd
ones by the high nibbles, two dots of BLOCK_K / 2 per K step. A group's scale covers a whole
K step when the group is a multiple of BLOCK_K (or spans K); otherwise it is gathered per
element.

Two shapes per GEMM, picked per step by a `when` on the row count M:
  M <= 16: one 16-row block; linear_wo also splits K over S programs (S fills about two waves
           of the GPU's SMs), each streaming its share of the packed weight once, and
           splitk_reduce_kernel adds the float32 partials in a fixed order (deterministic);
  M > 16:  tiles of 64 (wo) or 128 (w8a8) rows by 128 columns over the whole K.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.errors import KilnError
from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.gemm import mma, small_m_alternatives
from kiln.builder.kernels.spec import Gemm, I32

SMALL_M = 16
MAX_SPLITS = 16
REDUCE_BLOCK = 1024
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
WO_SMALL, WO_LARGE = (SMALL_M, 64, 128, 4, 3), (64, 128, 64, 4, 3)
W8A8_SMALL, W8A8_LARGE = (SMALL_M, 32, 256, 4, 3), (128, 128, 64, 8, 3)


@triton.jit
def w8a8_kernel(out_ptr, q_ptr, row_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, M,
                Q_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr, N: tl.constexpr,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    rows64, cols64 = rows.to(tl.int64), cols.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        a = tl.load(q_ptr + rows64[:, None] * Q_STRIDE + k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(w_ptr + cols64[None, :] * K + k[:, None], mask=k_ok[:, None] & col_ok[None, :],
                    other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    rs = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0)
    ws = tl.load(w_scale_ptr + cols, mask=col_ok, other=0.0)
    y = acc.to(tl.float32) * rs[:, None] * ws[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows64[:, None] * OUT_STRIDE + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _x_cols(x_ptr, pqs_ptr, rows64, row_ok, k, k_ok, X_STRIDE: tl.constexpr,
            HAS_PQS: tl.constexpr):
    """x[rows, k] ([BLOCK_M, len(k)]), times the pre-quant scale rounded to x's dtype."""
    x = tl.load(x_ptr + rows64[:, None] * X_STRIDE + k[None, :],
                mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    if HAS_PQS:
        p = tl.load(pqs_ptr + k, mask=k_ok, other=0.0)
        x = (x.to(tl.float32) * p[None, :]).to(x_ptr.dtype.element_ty)
    return x


@triton.jit
def _dequant(u, s_ptr, z_ptr, cols64, col_ok, k, k_ok, c, DT: tl.constexpr, NG: tl.constexpr,
             GROUP: tl.constexpr, BITS: tl.constexpr, HAS_ZERO: tl.constexpr,
             PER_STEP: tl.constexpr, BLOCK_K: tl.constexpr):
    """((u - zero) * scale).to(DT) of a weight tile u [len(k), BLOCK_N] at columns k."""
    if PER_STEP:  # one group per column of the tile: [1, BLOCK_N]
        at = (cols64 * NG + (c * BLOCK_K) // GROUP)[None, :]
        ok = col_ok[None, :]
    else:
        at = cols64[None, :] * NG + (k // GROUP)[:, None]
        ok = k_ok[:, None] & col_ok[None, :]
    s = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
    if HAS_ZERO:
        v = u.to(tl.float32) - tl.load(z_ptr + at, mask=ok, other=0).to(tl.float32)
    elif BITS == 4:
        v = u.to(tl.float32) - 8.0  # pack.INT4_SYMMETRIC_ZERO
    else:
        v = u.to(tl.float32)
    return (v * s).to(DT)


@triton.jit
def wo_gemm_kernel(out_ptr, partial_ptr, x_ptr, w_ptr, scales_ptr, zeros_ptr, pqs_ptr, bias_ptr,
                   M, num_splits, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                   N: tl.constexpr, K: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                   HAS_ZERO: tl.constexpr, HAS_PQS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   PER_STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    """Rows block program_id(0), columns block program_id(1), K share program_id(2) of
    num_splits: the result, or with num_splits > 1 a float32 partial [split, M, N]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    row_ok, col_ok = rows < M, cols < N
    rows64, cols64 = rows.to(tl.int64), cols.to(tl.int64)
    DT = x_ptr.dtype.element_ty
    NG = K // GROUP
    per = tl.cdiv((K + BLOCK_K - 1) // BLOCK_K, num_splits)
    lo = split * per
    hi = tl.minimum((K + BLOCK_K - 1) // BLOCK_K, lo + per)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c in range(lo, hi):
        if BITS == 4:
            j = c * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)  # byte j: elements 2j, 2j + 1
            k = 2 * j
            k_ok = k < K
            packed = tl.load(w_ptr + cols64[None, :] * (K // 2) + j[:, None],
                             mask=k_ok[:, None] & col_ok[None, :], other=0)
            w_lo = _dequant(packed & 0xF, scales_ptr, zeros_ptr, cols64, col_ok, k, k_ok, c, DT,
                            NG, GROUP, BITS, HAS_ZERO, PER_STEP, BLOCK_K)
            w_hi = _dequant(packed >> 4, scales_ptr, zeros_ptr, cols64, col_ok, k, k_ok, c, DT,
                            NG, GROUP, BITS, HAS_ZERO, PER_STEP, BLOCK_K)
            x_even = _x_cols(x_ptr, pqs_ptr, rows64, row_ok, k, k_ok, X_STRIDE, HAS_PQS)
            x_odd = _x_cols(x_ptr, pqs_ptr, rows64, row_ok, k + 1, k_ok, X_STRIDE, HAS_PQS)
            acc = mma(x_even, w_lo, acc, IEEE)
            acc = mma(x_odd, w_hi, acc, IEEE)
        else:
            k = c * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = k < K
            u = tl.load(w_ptr + cols64[None, :] * K + k[:, None],
                        mask=k_ok[:, None] & col_ok[None, :], other=0)
            w = _dequant(u, scales_ptr, zeros_ptr, cols64, col_ok, k, k_ok, c, DT, NG, GROUP,
                         BITS, HAS_ZERO, PER_STEP, BLOCK_K)
            acc = mma(_x_cols(x_ptr, pqs_ptr, rows64, row_ok, k, k_ok, X_STRIDE, HAS_PQS), w,
                       acc, IEEE)
    mask = row_ok[:, None] & col_ok[None, :]
    if num_splits == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows64[:, None] * OUT_STRIDE + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        at = (split * M + rows64)[:, None] * N + cols[None, :]
        tl.store(partial_ptr + at, acc, mask=mask)


@triton.jit
def splitk_reduce_kernel(out_ptr, partial_ptr, bias_ptr, M, num_splits,
                         OUT_STRIDE: tl.constexpr, N: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, num_splits):
        acc += tl.load(partial_ptr + (s * M + row) * N + cols, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * OUT_STRIDE + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


# -- configuration shared by the lowering and the direct launches ------------------------------

def _cdiv(a, b: int):
    return f"cdiv({a}, {b})" if isinstance(a, str) else -(-a // b)


def wo_constexprs(cfg: tuple, n: int, k: int, bits: int, group: int, zeros: bool, pqs: bool,
                  bias: bool, dtype: str) -> dict:
    bm, bn, bk = cfg[:3]
    return dict(N=n, K=k, BITS=bits, GROUP=group, HAS_ZERO=zeros, HAS_PQS=pqs, HAS_BIAS=bias,
                PER_STEP=group % bk == 0 or group == k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                IEEE=dtype == "float32")


def splits_formula(n: int, k: int) -> str:
    """S for M <= 16: about two programs per SM, at most one K step each at the limit."""
    bn, bk = WO_SMALL[1], WO_SMALL[2]
    return f"max(1, min({MAX_SPLITS}, {-(-k // bk)}, cdiv(2 * NSM, {-(-n // bn)})))"


def splits_for(n: int, k: int, num_sms: int) -> int:
    bn, bk = WO_SMALL[1], WO_SMALL[2]
    return max(1, min(MAX_SPLITS, -(-k // bk), -(-2 * num_sms // -(-n // bn))))


# -- lowering -----------------------------------------------------------------------------------

def plan_linear_fp8(node, ctx):
    q, w, x_scale, w_scale = node.inputs[:4]
    bias = node.inputs[4] if len(node.inputs) == 5 else None
    (out,) = node.outputs
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    if k % 16 or n % 16:
        raise KilnError(f"{w}: FP8 GEMMs need N and K multiples of 16 (cuBLASLt), got N={n} "
                        f"K={k}; build this model with --quant int8_sq or without --quant")
    ctx.gemm(Gemm(a=ctx.ref(q)[0], w=ctx.ref(w)[0], out=ctx.ref(out)[0],
                  bias=ctx.ref(bias)[0] if bias else None, m=ctx.rows(out), n=n, k=k,
                  lda=ctx.row_stride(q), ldc=ctx.row_stride(out), dtype=ctx.dtype(out),
                  in_dtype="float8_e4m3fn", a_scale=ctx.ref(x_scale)[0],
                  w_scale=ctx.ref(w_scale)[0],
                  alternatives=small_m_alternatives(ctx, q, w, out, bias, (x_scale, w_scale))))


def plan_linear_w8a8(node, ctx):
    q, row_scale, w, w_scale = node.inputs[:4]
    bias = node.inputs[4] if len(node.inputs) == 5 else None
    (out,) = node.outputs
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    m = ctx.rows(out)
    args = dict(out_ptr=ctx.ptr(out), q_ptr=ctx.ptr(q), row_scale_ptr=ctx.ptr(row_scale),
                w_ptr=ctx.ptr(w), w_scale_ptr=ctx.ptr(w_scale),
                bias_ptr=ctx.ptr(bias or w_scale), M=I32(m))  # no bias: never read
    for cfg, when in ((W8A8_SMALL, f"{m} <= {SMALL_M}"), (W8A8_LARGE, f"{m} > {SMALL_M}")):
        bm, bn, bk, warps, stages = cfg
        ctx.launch(w8a8_kernel, grid=(_cdiv(m, bm), _cdiv(n, bn)), when=when, num_warps=warps,
                   num_stages=stages, args=args,
                   constexprs=dict(Q_STRIDE=ctx.row_stride(q), OUT_STRIDE=ctx.row_stride(out),
                                   N=n, K=k, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn,
                                   BLOCK_K=bk))


def plan_linear_wo(node, ctx):
    from kiln.builder.ops.quant import _wo_operands
    at, a = _wo_operands(node), node.attrs
    x, w, scales = node.inputs[:3]
    opt = {name: node.inputs[i] for name, i in at.items()}
    (out,) = node.outputs
    n, k = int(ctx.graph.values[out].shape[-1]), ctx.width(x)
    m = ctx.rows(out)
    args = dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                scales_ptr=ctx.ptr(scales), zeros_ptr=ctx.ptr(opt.get("zeros", w)),
                pqs_ptr=ctx.ptr(opt.get("pre_quant_scale", scales)),
                bias_ptr=ctx.ptr(opt.get("bias", scales)), M=I32(m))  # absent ones: never read
    strides = dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out))
    flags = (a["bits"], a["group_size"], "zeros" in at, "pre_quant_scale" in at, "bias" in at,
             ctx.dtype(out))
    splits = ctx.derive(splits_formula(n, k))
    partials = ctx.scratch("quant_gemm_partials", str(MAX_SPLITS * SMALL_M * n * 4))
    small = f"{m} <= {SMALL_M}"
    _, bn, _, warps, stages = WO_SMALL
    ctx.launch(wo_gemm_kernel, grid=(1, _cdiv(n, bn), splits), when=small, num_warps=warps,
               num_stages=stages, args=dict(args, partial_ptr=partials, num_splits=I32(splits)),
               constexprs=dict(strides, **wo_constexprs(WO_SMALL, n, k, *flags)))
    ctx.launch(splitk_reduce_kernel, grid=(m, _cdiv(n, REDUCE_BLOCK)), num_warps=4,
               when=f"{small} and {splits} > 1",
               args=dict(out_ptr=args["out_ptr"], partial_ptr=partials, bias_ptr=args["bias_ptr"],
                         M=I32(m), num_splits=I32(splits)),
               constexprs=dict(OUT_STRIDE=strides["OUT_STRIDE"], N=n, HAS_BIAS="bias" in at,
                               BLOCK=REDUCE_BLOCK))
    bm, bn, _, warps, stages = WO_LARGE
    ctx.launch(wo_gemm_kernel, grid=(_cdiv(m, bm), _cdiv(n, bn), 1), when=f"{m} > {SMALL_M}",
               num_warps=warps, num_stages=stages,
               args=dict(args, partial_ptr=partials, num_splits=I32(1)),
               constexprs=dict(strides, **wo_constexprs(WO_LARGE, n, k, *flags)))


# -- direct launches ----------------------------------------------------------------------------

def linear_w8a8(q, row_scale, w, w_scale, bias=None, dtype=None, out=None):
    import torch
    m, k = q.shape
    n = w.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=dtype or torch.float32, device=q.device)
    bm, bn, bk, warps, stages = W8A8_SMALL if m <= SMALL_M else W8A8_LARGE
    direct(w8a8_kernel, q)[(_cdiv(m, bm), _cdiv(n, bn))](
        out, q, row_scale, w, w_scale, w_scale if bias is None else bias, m,
        Q_STRIDE=q.stride(0), OUT_STRIDE=out.stride(0), N=n, K=k, HAS_BIAS=bias is not None,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out


def linear_wo(x, w, scales, bits: int, group_size: int, zeros=None, pre_quant_scale=None,
              bias=None, num_splits: int | None = None, out=None):
    """The M <= 16 split-K path (num_splits: S, else as the plan picks it) or the tiled one."""
    import torch
    m, k = x.shape
    n = w.shape[0]
    out = x.new_empty((m, n)) if out is None else out
    dtype = str(x.dtype).split(".")[1]
    cfg = WO_SMALL if m <= SMALL_M else WO_LARGE
    if m > SMALL_M:
        splits = 1
    elif num_splits is not None:
        splits = num_splits
    else:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        splits = splits_for(n, k, sms)
    partials = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32,
                           device=x.device)
    some = scales  # any tensor stands in for an absent operand: it is never read
    direct(wo_gemm_kernel, x)[(_cdiv(m, cfg[0]), _cdiv(n, cfg[1]), splits)](
        out, partials, x, w, scales, some if zeros is None else zeros,
        some if pre_quant_scale is None else pre_quant_scale, some if bias is None else bias, m,
        splits, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0),
        **wo_constexprs(cfg, n, k, bits, group_size, zeros is not None,
                        pre_quant_scale is not None, bias is not None, dtype),
        num_warps=cfg[3], num_stages=cfg[4])
    if splits > 1:
        direct(splitk_reduce_kernel, x)[(m, _cdiv(n, REDUCE_BLOCK))](
            out, partials, some if bias is None else bias, m, splits, OUT_STRIDE=out.stride(0),
            N=n, HAS_BIAS=bias is not None, BLOCK=REDUCE_BLOCK, num_warps=4)
    return out
