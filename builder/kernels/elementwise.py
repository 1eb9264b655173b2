"""Elementwise kernels over token-major rows: silu_mul, gelu_tanh_mul, add, mul, silu,
gelu_tanh, scale, softcap, cast.

References: kiln.builder.ops.elementwise (silu_mul is F.silu(x[:, :I]) * x[:, I:], each op
rounded to the activation dtype as torch does). Grid: (rows, cdiv(width, BLOCK)).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels import gemm
from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.spec import F32

BLOCK = 1024
WARPS = 4
ADD, MUL = 0, 1
GELU_TANH, SCALE, SOFTCAP = 0, 1, 2  # unary_kernel's OP


@triton.jit
def tanh(x):
    """tanh in float32 through e^-2|x| (which never overflows): (1 - t) / (1 + t), signed;
    within ~1e-7 of torch's, exact far from 0."""
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def gelu_tanh(x):
    """GELU's tanh approximation in float32, as torch writes it (gelu(approximate="tanh"))."""
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def _act_mul_block(out_ptr, x_ptr, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                   WIDTH: tl.constexpr, BLOCK: tl.constexpr, GELU: tl.constexpr,
                   PAIRS: tl.constexpr):
    """One block of act(x[:, :I]) * x[:, I:] (PAIRS: act(x[:, 0::2]) * x[:, 1::2], the gate/up
    rows interleaved by passes/fuse_gate_up.py): the activation rounded to the dtype, then the
    product, as torch rounds each op."""
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    if PAIRS:  # one contiguous [BLOCK, 2] load, split in registers
        pair = 2 * col[:, None] + tl.arange(0, 2)[None, :]
        gate, up = tl.split(tl.load(x_ptr + row * X_STRIDE + pair, mask=mask[:, None],
                                    other=0.0).to(tl.float32))
    else:
        gate = tl.load(x_ptr + row * X_STRIDE + col, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * X_STRIDE + WIDTH + col, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        act = gelu_tanh(gate)
    else:
        act = gate / (1.0 + tl.exp(-gate))
    act = act.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * OUT_STRIDE + col, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def silu_mul_kernel(out_ptr, x_ptr, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                    WIDTH: tl.constexpr, BLOCK: tl.constexpr, PAIRS: tl.constexpr = 0,
                    PDL: tl.constexpr = 0):
    enter(PDL)
    _act_mul_block(out_ptr, x_ptr, X_STRIDE, OUT_STRIDE, WIDTH, BLOCK, False, PAIRS)


@triton.jit
def gelu_tanh_mul_kernel(out_ptr, x_ptr, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                         WIDTH: tl.constexpr, BLOCK: tl.constexpr, PAIRS: tl.constexpr = 0,
                         PDL: tl.constexpr = 0):
    enter(PDL)
    _act_mul_block(out_ptr, x_ptr, X_STRIDE, OUT_STRIDE, WIDTH, BLOCK, True, PAIRS)


@triton.jit
def unary_kernel(out_ptr, x_ptr, arg, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                 WIDTH: tl.constexpr, BLOCK: tl.constexpr, OP: tl.constexpr,
                 PDL: tl.constexpr = 0):
    """OP GELU_TANH: gelu_tanh(x); SCALE: x * arg; SOFTCAP:
    arg * tanh(x / arg). In float32, rounded once."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < WIDTH
    x = tl.load(x_ptr + row * X_STRIDE + col, mask=mask, other=0.0).to(tl.float32)
    if OP == 0:
        y = gelu_tanh(x)
    elif OP == 1:
        y = x * arg
    else:
        y = arg * tanh(x / arg)
    tl.store(out_ptr + row * OUT_STRIDE + col, y.to(out_ptr.dtype.element_ty), mask=mask)


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

def act_mul_launch(node, ctx, kernel=None):
    """The launch of an act-mul node (silu_mul_kernel unless `kernel`), over its gate/up rows
    as the node lays them out (its `pairs`)."""
    (x,), (out,) = node.inputs, node.outputs
    width = ctx.width(out)
    return ctx.make_launch(
        kernel or silu_mul_kernel, grid=_grid(ctx.rows(out), width), num_warps=WARPS,
        args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x)),
        constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out),
                        WIDTH=width, BLOCK=BLOCK, PAIRS=int(bool(node.attrs.get("pairs")))))


def plan_silu_mul(node, ctx):
    if node.attrs.get("fold_into_previous"):  # the gate/up linear before it runs it
        if ctx.epilogues.pop(node.outputs[0], None) is None:
            raise ValueError(f"{ctx.label}: marked fold_into_previous, but the linear before "
                             "it did not take it")
        return
    launch = act_mul_launch(node, ctx)
    prologue = gemm.SILU_MUL_PAIRS if node.attrs.get("pairs") else gemm.SILU_MUL
    if not gemm.fold(ctx, node, launch, prologue, node.inputs[0]):
        ctx.program.append(launch)


def _plan_unary(kernel, op: int | None = None, arg=None):
    """A row-wise kernel over the output's width (an act-mul's I); unary_kernel's OP and its
    arg (a function of the node) where given."""
    def plan(node, ctx):
        (x,), (out,) = node.inputs, node.outputs
        width = ctx.width(out)
        ctx.launch(kernel, grid=_grid(ctx.rows(out), width), num_warps=WARPS,
                   args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x),
                             **({} if arg is None else {"arg": F32(arg(node))})),
                   constexprs=dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out),
                                   WIDTH=width, BLOCK=BLOCK, **({} if op is None else {"OP": op})))
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


def plan_gelu_tanh_mul(node, ctx):
    ctx.program.append(act_mul_launch(node, ctx, gelu_tanh_mul_kernel))


plan_silu = _plan_unary(silu_kernel)
plan_gelu_tanh = _plan_unary(unary_kernel, GELU_TANH, lambda node: 0.0)
plan_scale = _plan_unary(unary_kernel, SCALE, lambda node: node.attrs["value"])
plan_softcap = _plan_unary(unary_kernel, SOFTCAP, lambda node: node.attrs["cap"])
plan_cast = _plan_unary(cast_kernel)
plan_add = _plan_binary(ADD)
plan_mul = _plan_binary(MUL)


# -- direct launches ----------------------------------------------------------------------------

def silu_mul(x, kernel=silu_mul_kernel, pairs: bool = False):
    """act(x[:, :I]) * x[:, I:] through `kernel` (silu_mul_kernel or gelu_tanh_mul_kernel); with
    `pairs`, act(x[:, 0::2]) * x[:, 1::2]."""
    width = x.shape[1] // 2
    out = x.new_empty((x.shape[0], width))
    direct(kernel, x)[_grid(x.shape[0], width)](
        out, x, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), WIDTH=width, BLOCK=BLOCK,
        PAIRS=int(pairs), num_warps=WARPS)
    return out


def gelu_tanh_mul(x, pairs: bool = False):
    return silu_mul(x, gelu_tanh_mul_kernel, pairs)


def unary(x, op: int, arg: float = 0.0):
    out = x.new_empty(x.shape)
    direct(unary_kernel, x)[_grid(x.shape[0], x.shape[1])](
        out, x, arg, X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0), WIDTH=x.shape[1],
        BLOCK=BLOCK, OP=op, num_warps=WARPS)
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
