"""Norm kernels: rmsnorm, residual add + rmsnorm, per-head rmsnorm, layernorm.

Reference: kiln.builder.ops.norm (HuggingFace LlamaRMSNorm): normalize in float32, round to
the activation dtype, then multiply by the weight in that dtype. Rounding the normalized value
before the weight multiply, as here, reproduces it bit for bit up to the rsqrt and the order
of the sum. One program normalizes one row (one token).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels import gemm
from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.spec import F32, pow2


@triton.jit
def norm_row(x, w_ptr, cols, mask, eps, H: tl.constexpr, DT: tl.constexpr):
    """One row x (float32, [BLOCK]) normalized, rounded to DT, times the weight: float32, for
    the caller to round to DT."""
    inv = tl.math.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    y = (x * inv).to(DT).to(tl.float32)
    return tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) * y


@triton.jit
def rmsnorm_kernel(out_ptr, x_ptr, w_ptr, eps, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                   H: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * X_STRIDE + cols, mask=mask, other=0.0).to(tl.float32)
    y = norm_row(x, w_ptr, cols, mask, eps, H, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * OUT_STRIDE + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_rmsnorm_kernel(out_ptr, sum_ptr, x_ptr, res_ptr, w_ptr, eps, X_STRIDE: tl.constexpr,
                       RES_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                       SUM_STRIDE: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr,
                       PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * X_STRIDE + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + row * RES_STRIDE + cols, mask=mask, other=0.0).to(tl.float32)
    total = (x + r).to(sum_ptr.dtype.element_ty)
    tl.store(sum_ptr + row * SUM_STRIDE + cols, total, mask=mask)
    y = norm_row(total.to(tl.float32), w_ptr, cols, mask, eps, H, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * OUT_STRIDE + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def head_rmsnorm_kernel(out_ptr, x_ptr, w_ptr, eps, X_STRIDE: tl.constexpr,
                        OUT_STRIDE: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                        HEADS_PAD: tl.constexpr, DIM_PAD: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, DIM_PAD)
    mask = (h[:, None] < HEADS) & (d[None, :] < HEAD_DIM)
    offs = h[:, None] * HEAD_DIM + d[None, :]
    x = tl.load(x_ptr + row * X_STRIDE + offs, mask=mask, other=0.0).to(tl.float32)
    inv = tl.math.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
    y = (x * inv[:, None]).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + d, mask=d < HEAD_DIM, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * OUT_STRIDE + offs, (w[None, :] * y).to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def layernorm_kernel(out_ptr, x_ptr, w_ptr, b_ptr, eps, X_STRIDE: tl.constexpr,
                     OUT_STRIDE: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PDL: tl.constexpr = 0):
    """LayerNorm of one row: centered, scaled by rsqrt(variance + eps) and the weight, plus the
    bias where HAS_BIAS, in float32, rounded once (ops.norm.layer_norm)."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * X_STRIDE + cols, mask=mask, other=0.0).to(tl.float32)
    centered = tl.where(mask, x - tl.sum(x, axis=0) / H, 0.0)
    inv = tl.math.rsqrt(tl.sum(centered * centered, axis=0) / H + eps)
    y = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) * (centered * inv)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * OUT_STRIDE + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def row_warps(block: int) -> int:
    """Warps for a one-row program of `block` elements: about 8 elements a thread."""
    return max(1, min(16, block // 256))


# -- lowering: plan node -> launch --------------------------------------------------------------

def plan_rmsnorm(node, ctx):
    (x, w), (out,) = node.inputs, node.outputs
    h = ctx.width(x)
    block = pow2(h)
    launch = ctx.make_launch(
        rmsnorm_kernel, grid=(ctx.rows(out),), num_warps=row_warps(block),
        args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                  eps=F32(node.attrs["eps"])),
        constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out), H=h,
                        BLOCK=block))
    if not gemm.fold(ctx, node, launch, gemm.NORM, x, g=w, eps=node.attrs["eps"]):
        ctx.program.append(launch)


def plan_add_rmsnorm(node, ctx):
    (x, res, w), (out, total) = node.inputs, node.outputs
    h = ctx.width(x)
    block = pow2(h)
    launch = ctx.make_launch(
        add_rmsnorm_kernel, grid=(ctx.rows(out),), num_warps=row_warps(block),
        args=dict(out_ptr=ctx.ptr(out), sum_ptr=ctx.ptr(total), x_ptr=ctx.ptr(x),
                  res_ptr=ctx.ptr(res), w_ptr=ctx.ptr(w), eps=F32(node.attrs["eps"])),
        constexprs=dict(X_STRIDE=ctx.row_stride(x), RES_STRIDE=ctx.row_stride(res),
                        OUT_STRIDE=ctx.row_stride(out), SUM_STRIDE=ctx.row_stride(total),
                        H=h, BLOCK=block))
    if not gemm.fold(ctx, node, launch, gemm.ADD_NORM, x, res, total, w, node.attrs["eps"]):
        ctx.program.append(launch)


def plan_layernorm(node, ctx):
    (x, w, *bias), (out,) = node.inputs, node.outputs
    h = ctx.width(x)
    block = pow2(h)
    ctx.launch(layernorm_kernel, grid=(ctx.rows(out),), num_warps=row_warps(block),
               args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                         b_ptr=ctx.ptr(bias[0] if bias else w), eps=F32(node.attrs["eps"])),
               constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out), H=h,
                               BLOCK=block, HAS_BIAS=bool(bias)))


def plan_head_rmsnorm(node, ctx):
    (x, w), (out,) = node.inputs, node.outputs
    hd = node.attrs["head_dim"]
    heads = ctx.width(x) // hd
    ctx.launch(head_rmsnorm_kernel, grid=(ctx.rows(out),),
               num_warps=row_warps(pow2(heads) * pow2(hd)),
               args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                         eps=F32(node.attrs["eps"])),
               constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out),
                               HEADS=heads, HEAD_DIM=hd, HEADS_PAD=pow2(heads), DIM_PAD=pow2(hd)))


# -- direct launches on torch tensors (tests, benchmarks) ---------------------------------------

def rmsnorm(x, w, eps: float, out=None):
    out = x.new_empty(x.shape) if out is None else out
    h = x.shape[1]
    block = pow2(h)
    direct(rmsnorm_kernel, x)[(x.shape[0],)](
        out, x, w, eps, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), H=h, BLOCK=block,
        num_warps=row_warps(block))
    return out


def layernorm(x, w, eps: float, bias=None):
    out = x.new_empty(x.shape)
    h = x.shape[1]
    block = pow2(h)
    direct(layernorm_kernel, x)[(x.shape[0],)](
        out, x, w, w if bias is None else bias, eps, X_STRIDE=x.stride(0),
        OUT_STRIDE=out.stride(0), H=h, BLOCK=block, HAS_BIAS=bias is not None,
        num_warps=row_warps(block))
    return out


def add_rmsnorm(x, res, w, eps: float):
    out, total = x.new_empty(x.shape), x.new_empty(x.shape)
    h = x.shape[1]
    block = pow2(h)
    direct(add_rmsnorm_kernel, x)[(x.shape[0],)](
        out, total, x, res, w, eps, X_STRIDE=x.stride(0), RES_STRIDE=res.stride(0),
        OUT_STRIDE=out.stride(0), SUM_STRIDE=total.stride(0), H=h, BLOCK=block,
        num_warps=row_warps(block))
    return out, total


def head_rmsnorm(x, w, eps: float, head_dim: int):
    out = x.new_empty(x.shape)
    heads = x.shape[1] // head_dim
    direct(head_rmsnorm_kernel, x)[(x.shape[0],)](
        out, x, w, eps, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), HEADS=heads,
        HEAD_DIM=head_dim, HEADS_PAD=pow2(heads), DIM_PAD=pow2(head_dim),
        num_warps=row_warps(pow2(heads) * pow2(head_dim)))
    return out

