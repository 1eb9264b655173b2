"""Elementwise kernels over token-major rows: silu_mul, add, mul, silu, cast.

References: kiln.builder.ops.elementwise (silu_mul is F.silu(x[:, :I]) * x[:, I:], each op
rounded to the activation dtype as torch does). Grid: (rows, cdiv(width, BLOCK)).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels import gemm
from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter

BLOCK = 1024
WARPS = 4
ADD, MUL = 0, 1


@triton.jit
def silu_mul_kernel(out_ptr, x_ptr, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                    WIDTH: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    gate = tl.load(x_ptr + row * X_STRIDE + col, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * X_STRIDE + WIDTH + col, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * OUT_STRIDE + col, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def silu_kernel(out_ptr, x_ptr, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                WIDTH: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    x = tl.load(x_ptr + row * X_STRIDE + col, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * OUT_STRIDE + col, (x / (1.0 + tl.exp(-x))).to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def binary_kernel(out_ptr, a_ptr, b_ptr, A_STRIDE: tl.constexpr, B_STRIDE: tl.constexpr,
                  OUT_STRIDE: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr,
                  OP: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    a = tl.load(a_ptr + row * A_STRIDE + col, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * B_STRIDE + col, mask=mask, other=0.0).to(tl.float32)
    if OP == 0:
        y = a + b
    else:
        y = a * b
    tl.store(out_ptr + row * OUT_STRIDE + col, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def cast_kernel(out_ptr, x_ptr, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                WIDTH: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    x = tl.load(x_ptr + row * X_STRIDE + col, mask=mask, other=0.0)
    tl.store(out_ptr + row * OUT_STRIDE + col, x.to(out_ptr.dtype.element_ty), mask=mask)


def _grid(rows, width: int) -> tuple:
    return (rows, f"cdiv({width}, {BLOCK})") if isinstance(rows, str) else (rows, -(-width // BLOCK))


# -- lowering -----------------------------------------------------------------------------------

def silu_mul_launch(node, ctx):
    (x,), (out,) = node.inputs, node.outputs
    width = ctx.width(out)
    return ctx.make_launch(
        silu_mul_kernel, grid=_grid(ctx.rows(out), width), num_warps=WARPS,
        args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x)),
        constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out),
                        WIDTH=width, BLOCK=BLOCK))


def plan_silu_mul(node, ctx):
    if node.attrs.get("fold_into_previous"):  # the gate/up linear before it runs it
        if ctx.epilogues.pop(node.outputs[0], None) is None:
            raise ValueError(f"{ctx.label}: marked fold_into_previous, but the linear before "
                             "it did not take it")
        return
    launch = silu_mul_launch(node, ctx)
    if not gemm.fold(ctx, node, launch, gemm.SILU_MUL, node.inputs[0]):
        ctx.program.append(launch)


def _plan_unary(kernel):
    def plan(node, ctx):
        (x,), (out,) = node.inputs, node.outputs
        width = ctx.width(out)
        ctx.launch(kernel, grid=_grid(ctx.rows(out), width), num_warps=WARPS,
                   args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x)),
                   constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out),
                                   WIDTH=width, BLOCK=BLOCK))
    return plan


def _plan_binary(op: int):
    def plan(node, ctx):
        (a, b), (out,) = node.inputs, node.outputs
        width = ctx.width(out)
        ctx.launch(binary_kernel, grid=_grid(ctx.rows(out), width), num_warps=WARPS,
                   args=dict(out_ptr=ctx.ptr(out), a_ptr=ctx.ptr(a), b_ptr=ctx.ptr(b)),
                   constexprs=dict(A_STRIDE=ctx.row_stride(a), B_STRIDE=ctx.row_stride(b),
                                   OUT_STRIDE=ctx.row_stride(out), WIDTH=width, BLOCK=BLOCK,
                                   OP=op))
    return plan


plan_silu = _plan_unary(silu_kernel)
plan_cast = _plan_unary(cast_kernel)
plan_add = _plan_binary(ADD)
plan_mul = _plan_binary(MUL)


# -- direct launches ----------------------------------------------------------------------------

def silu_mul(x):
    width = x.shape[1] // 2
    out = x.new_empty((x.shape[0], width))
    direct(silu_mul_kernel, x)[_grid(x.shape[0], width)](
        out, x, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), WIDTH=width, BLOCK=BLOCK,
        num_warps=WARPS)
    return out


def silu(x):
    out = x.new_empty(x.shape)
    direct(silu_kernel, x)[_grid(x.shape[0], x.shape[1])](
        out, x, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), WIDTH=x.shape[1], BLOCK=BLOCK,
        num_warps=WARPS)
    return out


def binary(a, b, op: int):
    out = a.new_empty(a.shape)
    direct(binary_kernel, a)[_grid(a.shape[0], a.shape[1])](
        out, a, b, A_STRIDE=a.stride(0), B_STRIDE=b.stride(0), OUT_STRIDE=out.stride(0),
        WIDTH=a.shape[1], BLOCK=BLOCK, OP=op, num_warps=WARPS)
    return out


def cast(x, dtype):
    out = x.new_empty(x.shape, dtype=dtype)
    direct(cast_kernel, x)[_grid(x.shape[0], x.shape[1])](
        out, x, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), WIDTH=x.shape[1], BLOCK=BLOCK,
        num_warps=WARPS)
    return out
