"""Activation quantization kernels: quantize_fp8, quantize_int8, and RMSNorm / SiLU-mul fused
with the quantization of their output (rmsnorm_quant, add_rmsnorm_quant, silu_mul_quant).
The quantized GEMMs are in quant_gemm.py; PLANNERS below covers both.

Reference: kiln.builder.ops.quant (formats: kiln.quantize.pack). The value quantized is
computed exactly as the unquantized kernel computes it (norm.py, elementwise.py), then
  fp8:  sat448(y * (1 / scale)) cast to e4m3 (round to nearest even)        static scale
  int8: amax = max|y|, q = clamp(rint(y * (127 / amax)), -128, 127),
        row_scale = amax / 127; an all-zero row gives q = 0, row_scale = 1 / 127
with every step rounded as torch rounds it (1 / scale and amax / 127 correctly rounded,
127 / amax as torch computes it: (1 / amax) * 127), so a kernel and its reference agree bit
for bit on equal inputs. fp8 rows: grid (rows, cdiv(width, BLOCK)). int8 rows need
the whole row's amax: one program per row, two passes over the row in BLOCK chunks (the second
re-reads the row from cache). Norms: one program per row, the row in registers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels import gemm, quant_gemm
from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.norm import norm_row, row_warps
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.rounding import rint, to_e4m3
from kiln.builder.kernels.spec import F32, pow2

FP8, INT8 = "float8_e4m3fn", "int8"
ROW_BLOCK = 4096  # int8 rows are walked in chunks of at most this many elements
FP8_BLOCK = 1024


@triton.jit
def _safe(amax):
    """The row maximum to scale by: 1 for a row that counts as all zeros (pack.TINY_AMAX)."""
    return tl.where(amax > 5.9604644775390625e-08, amax, 1.0)


@triton.jit
def _int8(y, amax):
    """Per-token int8 codes of y (float32) for the row maximum amax."""
    factor = tl.math.div_rn(1.0, _safe(amax)) * 127.0  # as torch evaluates 127 / amax
    q = tl.minimum(tl.maximum(rint(y * factor), -128.0), 127.0)
    return tl.where(amax > 5.9604644775390625e-08, q, 0.0).to(tl.int8)


@triton.jit
def _source(x_ptr, sm_ptr, row, col, mask, X_STRIDE: tl.constexpr, WIDTH: tl.constexpr,
            SILU_MUL: tl.constexpr, SMOOTH: tl.constexpr):
    """The float32 value to quantize: x, or silu(gate) * up rounded to x's dtype after each
    step as the silu_mul op rounds; times the smoother (float32) if any."""
    base = x_ptr + row * X_STRIDE + col
    if SILU_MUL:
        gate = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(base + WIDTH, mask=mask, other=0.0).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
        y = (act * up).to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        y = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    if SMOOTH:
        y = y * tl.load(sm_ptr + col, mask=mask, other=0.0)
    return y


@triton.jit
def fp8_rows_kernel(q_ptr, x_ptr, scale_ptr, X_STRIDE: tl.constexpr, Q_STRIDE: tl.constexpr,
                    WIDTH: tl.constexpr, BLOCK: tl.constexpr, SILU_MUL: tl.constexpr,
                    PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    inv = tl.math.div_rn(1.0, tl.load(scale_ptr))
    y = _source(x_ptr, scale_ptr, row, col, mask, X_STRIDE, WIDTH, SILU_MUL, False)
    tl.store(q_ptr + row * Q_STRIDE + col, to_e4m3(y, inv, q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def int8_rows_kernel(q_ptr, row_scale_ptr, x_ptr, sm_ptr, X_STRIDE: tl.constexpr,
                     Q_STRIDE: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr,
                     SILU_MUL: tl.constexpr, SMOOTH: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    top = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, WIDTH, BLOCK):
        col = start + tl.arange(0, BLOCK)
        y = _source(x_ptr, sm_ptr, row, col, col < WIDTH, X_STRIDE, WIDTH, SILU_MUL, SMOOTH)
        top = tl.maximum(top, tl.abs(y))
    amax = tl.max(top, axis=0)
    for start in range(0, WIDTH, BLOCK):
        col = start + tl.arange(0, BLOCK)
        mask = col < WIDTH
        y = _source(x_ptr, sm_ptr, row, col, mask, X_STRIDE, WIDTH, SILU_MUL, SMOOTH)
        tl.store(q_ptr + row * Q_STRIDE + col, _int8(y, amax), mask=mask)
    tl.store(row_scale_ptr + row, tl.math.div_rn(_safe(amax), 127.0))


@triton.jit
def rmsnorm_quant_kernel(q_ptr, row_scale_ptr, sum_ptr, x_ptr, res_ptr, w_ptr, scale_ptr, eps,
                         X_STRIDE: tl.constexpr, RES_STRIDE: tl.constexpr,
                         Q_STRIDE: tl.constexpr, SUM_STRIDE: tl.constexpr, H: tl.constexpr,
                         BLOCK: tl.constexpr, ADD: tl.constexpr, IS_FP8: tl.constexpr,
                         PDL: tl.constexpr = 0):
    """rmsnorm (ADD: of x + residual, whose sum is stored) as norm.py computes it, quantized."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * X_STRIDE + cols, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        r = tl.load(res_ptr + row * RES_STRIDE + cols, mask=mask, other=0.0).to(tl.float32)
        total = (x + r).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * SUM_STRIDE + cols, total, mask=mask)
        x = total.to(tl.float32)
    y = norm_row(x, w_ptr, cols, mask, eps, H, x_ptr.dtype.element_ty)
    y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
    if IS_FP8:
        q = to_e4m3(y, tl.math.div_rn(1.0, tl.load(scale_ptr)), q_ptr.dtype.element_ty)
    else:
        amax = tl.max(tl.abs(y), axis=0)
        q = _int8(y, amax)
        tl.store(row_scale_ptr + row, tl.math.div_rn(_safe(amax), 127.0))
    tl.store(q_ptr + row * Q_STRIDE + cols, q, mask=mask)


# -- launch shapes shared by the lowering and the direct launches ------------------------------

def _rows_launch(qdtype: str, rows, width: int) -> tuple[tuple, int, int]:
    """(grid, BLOCK, num_warps) of fp8_rows_kernel / int8_rows_kernel."""
    if qdtype == FP8:
        grid = (rows, -(-width // FP8_BLOCK))
        return grid, FP8_BLOCK, 4
    block = min(ROW_BLOCK, pow2(width))
    return (rows,), block, row_warps(block)


# -- lowering: plan node -> launches ------------------------------------------------------------

def fp8_rows_launch(ctx, node, x: str, scale: str, silu_mul: bool):
    """The fp8_rows_kernel launch of an FP8 quantize_fp8 or silu_mul_quant node."""
    (q,) = node.outputs
    width = ctx.width(q)
    grid, block, warps = _rows_launch(FP8, ctx.rows(q), width)
    return ctx.make_launch(
        fp8_rows_kernel, grid=grid, num_warps=warps,
        args=dict(q_ptr=ctx.ptr(q), x_ptr=ctx.ptr(x), scale_ptr=ctx.ptr(scale)),
        constexprs=dict(X_STRIDE=ctx.row_stride(x), Q_STRIDE=ctx.row_stride(q), WIDTH=width,
                        BLOCK=block, SILU_MUL=silu_mul))


def _plan_rows(ctx, node, qdtype: str, x: str, extra: str | None, width: int, silu_mul: bool):
    """quantize_* and silu_mul_quant: `extra` is the fp8 scale or the int8 smoother. An fp8 one
    marked fold_into_next is left to the linear_fp8 after it (gemm.fold); one marked
    fold_into_previous was taken by the linear_fp8 before it (gemm.take_epilogue)."""
    if node.attrs.get("fold_into_previous"):
        if ctx.epilogues.pop(node.outputs[0], None) is None:
            raise ValueError(f"{ctx.label}: marked fold_into_previous, but the linear before "
                             "it did not take it")
        return
    outs = node.outputs
    if qdtype == FP8:
        launch = fp8_rows_launch(ctx, node, x, extra, silu_mul)
        if not gemm.fold(ctx, node, launch, gemm.SILU_MUL if silu_mul else gemm.PLAIN, x,
                         scale=extra):
            ctx.program.append(launch)
        return
    grid, block, warps = _rows_launch(qdtype, ctx.rows(outs[0]), width)
    common = dict(X_STRIDE=ctx.row_stride(x), Q_STRIDE=ctx.row_stride(outs[0]), WIDTH=width,
                  BLOCK=block, SILU_MUL=silu_mul)
    q, row_scale = outs
    ctx.launch(int8_rows_kernel, grid=grid, num_warps=warps,
               args=dict(q_ptr=ctx.ptr(q), row_scale_ptr=ctx.ptr(row_scale), x_ptr=ctx.ptr(x),
                         sm_ptr=ctx.ptr(extra if extra else x)),  # unread without SMOOTH
               constexprs=dict(common, SMOOTH=extra is not None))


def plan_quantize_fp8(node, ctx):
    x, scale = node.inputs
    _plan_rows(ctx, node, FP8, x, scale, ctx.width(x), False)


def plan_quantize_int8(node, ctx):
    x = node.inputs[0]
    smoother = node.inputs[1] if len(node.inputs) == 2 else None
    _plan_rows(ctx, node, INT8, x, smoother, ctx.width(x), False)


def plan_silu_mul_quant(node, ctx):
    x = node.inputs[0]
    extra = node.inputs[1] if len(node.inputs) == 2 else None
    _plan_rows(ctx, node, node.attrs["qdtype"], x, extra, ctx.width(node.outputs[0]), True)


def _plan_norm_quant(node, ctx, add: bool):
    is_fp8 = node.attrs["qdtype"] == FP8
    x, res, w = node.inputs[:3] if add else (node.inputs[0], None, node.inputs[1])
    scale = node.inputs[-1] if is_fp8 else None
    outs = list(node.outputs)
    q, row_scale = outs[0], (None if is_fp8 else outs[1])
    total = outs[-1] if add else None
    h = ctx.width(x)
    block = pow2(h)
    launch = ctx.make_launch(
        rmsnorm_quant_kernel, grid=(ctx.rows(q),), num_warps=row_warps(block),
        args=dict(q_ptr=ctx.ptr(q), row_scale_ptr=ctx.ptr(row_scale or x),
                  sum_ptr=ctx.ptr(total or x), x_ptr=ctx.ptr(x), res_ptr=ctx.ptr(res or x),
                  w_ptr=ctx.ptr(w), scale_ptr=ctx.ptr(scale or w),
                  eps=F32(node.attrs["eps"])),  # unused pointers: any valid buffer
        constexprs=dict(X_STRIDE=ctx.row_stride(x), RES_STRIDE=ctx.row_stride(res) if add else 0,
                        Q_STRIDE=ctx.row_stride(q),
                        SUM_STRIDE=ctx.row_stride(total) if add else 0, H=h, BLOCK=block,
                        ADD=add, IS_FP8=is_fp8))
    if not gemm.fold(ctx, node, launch, gemm.ADD_NORM if add else gemm.NORM, x, res, total, w,
                     node.attrs["eps"], scale):
        ctx.program.append(launch)


def plan_rmsnorm_quant(node, ctx):
    _plan_norm_quant(node, ctx, add=False)


def plan_add_rmsnorm_quant(node, ctx):
    _plan_norm_quant(node, ctx, add=True)


# -- direct launches on torch tensors (tests, benchmarks) ---------------------------------------
# Each returns the op's outputs as a list, in the op's order; `out` may pass them preallocated.

def _alloc(x, qdtype: str, width: int, out):
    import torch
    if out is not None:
        return list(out)
    rows = x.shape[0]
    q = x.new_empty((rows, width), dtype=torch.float8_e4m3fn if qdtype == FP8 else torch.int8)
    return [q] if qdtype == FP8 else [q, x.new_empty((rows,), dtype=torch.float32)]


def _rows(x, qdtype: str, extra, width: int, silu_mul: bool, out):
    outs = _alloc(x, qdtype, width, out)
    grid, block, warps = _rows_launch(qdtype, x.shape[0], width)
    shape = dict(X_STRIDE=x.stride(0), Q_STRIDE=outs[0].stride(0), WIDTH=width, BLOCK=block,
                 SILU_MUL=silu_mul, num_warps=warps)
    if qdtype == FP8:
        direct(fp8_rows_kernel, x)[grid](outs[0], x, extra, **shape)
    else:
        direct(int8_rows_kernel, x)[grid](outs[0], outs[1], x, x if extra is None else extra,
                                          SMOOTH=extra is not None, **shape)
    return outs


def quantize_fp8(x, scale, out=None):
    return _rows(x, FP8, scale, x.shape[1], False, out)


def quantize_int8(x, smoother=None, out=None):
    return _rows(x, INT8, smoother, x.shape[1], False, out)


def silu_mul_quant(x, qdtype: str, scale_or_smoother=None, out=None):
    return _rows(x, qdtype, scale_or_smoother, x.shape[1] // 2, True, out)


def rmsnorm_quant(x, w, eps: float, qdtype: str, scale=None, res=None, out=None):
    """rmsnorm_quant, or add_rmsnorm_quant when `res` is given (the sum comes last)."""
    h = x.shape[1]
    outs = _alloc(x, qdtype, h, out[:-1] if out is not None and res is not None else out)
    total = (out[-1] if out is not None else x.new_empty(x.shape)) if res is not None else x
    block = pow2(h)
    row_scale = outs[1] if qdtype == INT8 else x
    direct(rmsnorm_quant_kernel, x)[(x.shape[0],)](
        outs[0], row_scale, total, x, x if res is None else res, w,
        w if scale is None else scale, eps, X_STRIDE=x.stride(0),
        RES_STRIDE=0 if res is None else res.stride(0), Q_STRIDE=outs[0].stride(0),
        SUM_STRIDE=total.stride(0), H=h, BLOCK=block, ADD=res is not None,
        IS_FP8=qdtype == FP8, num_warps=row_warps(block))
    return outs + ([total] if res is not None else [])


PLANNERS = {"quantize_fp8": plan_quantize_fp8, "quantize_int8": plan_quantize_int8,
            "rmsnorm_quant": plan_rmsnorm_quant, "add_rmsnorm_quant": plan_add_rmsnorm_quant,
            "silu_mul_quant": plan_silu_mul_quant, "linear_fp8": quant_gemm.plan_linear_fp8,
            "linear_w8a8": quant_gemm.plan_linear_w8a8, "linear_wo": quant_gemm.plan_linear_wo}
