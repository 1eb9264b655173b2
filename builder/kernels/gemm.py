"""Linear layers: cuBLASLt GEMMs (run by the C++ plan executor, csrc/gpu/gemm.cpp), each with
Triton alternatives for a few rows that the executor may pick instead.

Reference: kiln.builder.ops.linear: out[M, N] = x[M, K] @ w[N, K].T (+ bias[N]). M is the
value's row symbol (T or B); the executor picks cuBLASLt's algorithm per M at run time through
cublasLtMatmulAlgoGetHeuristic and remembers it.

A decode step's GEMMs have M of 1 to 16 and only stream the weight, so their speed is the
bandwidth they reach. cuBLASLt's kernels leave some of it unused on narrow layers (N of a few
thousand: too few tiles to keep every SM loading). `small_m_gemm_kernel` gives each program
BLOCK_N weight rows over the whole K (one 16-row tensor-core tile of x against them), so a
4096-wide layer already spreads over 256 programs. Each GEMM carries its configurations as
alternatives for M <= SMALL_M; the executor times them against cuBLASLt's pick the first time
it meets an M and keeps the fastest (GemmChoice reports it). FP8 GEMMs (linear_fp8) get the same
kernel with SCALED: the e4m3 operands are widened to float16 (exactly: every e4m3 value is a
float16 value) for the tensor cores, and out = (x @ w.T) * (a_scale * w_scale) (+ bias).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.spec import F32, I32, Gemm

SMALL_M = 16
# (BLOCK_N, BLOCK_K, num_warps, num_stages): the alternatives offered for M <= SMALL_M, for
# 16-bit weights and, twice as deep in K for the same bytes a step, for FP8 ones. Each set
# holds the configurations that came out best on some Llama-3.1-8B layer at M = 1 on the H100
# (tests/gpu/gemm_sweep.py): no one of them is best on every shape.
SMALL_CONFIGS = ((16, 256, 4, 4), (32, 128, 4, 4), (16, 512, 4, 3), (16, 128, 2, 6))
SMALL_CONFIGS_FP8 = ((16, 512, 4, 4), (32, 256, 4, 4), (16, 256, 2, 6), (64, 256, 4, 3))
# The configurations norm_gemm_kernel is offered in: the two that won at M = 1 on the H200
# (q/k/v and gate/up #3, o and the LM head #1); each one more is 4 kernels to compile.
NORM_CONFIGS = (SMALL_CONFIGS[1], SMALL_CONFIGS[3])


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b; IEEE: in full float32 (float32 models), else the inputs' tensor-core rate."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _weight_tile(w_ptr, cols64, k, k_ok, col_ok, N: tl.constexpr, K: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """w[cols, k] as a [BLOCK_K, BLOCK_N] tile (unmasked where the blocks divide the shape)."""
    if K % BLOCK_K == 0 and N % BLOCK_N == 0:
        return tl.load(w_ptr + cols64[None, :] * K + k[:, None])
    else:
        return tl.load(w_ptr + cols64[None, :] * K + k[:, None],
                       mask=k_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _store_rows(out_ptr, acc, bias_ptr, rows, cols, row_ok, col_ok, OUT_STRIDE: tl.constexpr,
                HAS_BIAS: tl.constexpr):
    """out[rows, cols] = acc (+ bias[cols]), in out's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * OUT_STRIDE + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def small_m_gemm_kernel(out_ptr, x_ptr, w_ptr, bias_ptr, a_scale_ptr, w_scale_ptr, M,
                        X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr, N: tl.constexpr,
                        K: tl.constexpr, HAS_BIAS: tl.constexpr, SCALED: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        IEEE: tl.constexpr, PDL: tl.constexpr = 0):
    """Rows 0..M-1 (M <= BLOCK_M) of out, columns block program_id(0), over the whole K."""
    enter(PDL)
    rows = tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_ptr + rows[:, None] * X_STRIDE + k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = _weight_tile(w_ptr, cols64, k, k_ok, col_ok, N, K, BLOCK_N, BLOCK_K)
        if SCALED:
            x = x.to(tl.float16)
            w = w.to(tl.float16)
        acc = mma(x, w, acc, IEEE)
    if SCALED:
        acc = acc * (tl.load(a_scale_ptr) * tl.load(w_scale_ptr))
    _store_rows(out_ptr, acc, bias_ptr, rows, cols, row_ok, col_ok, OUT_STRIDE, HAS_BIAS)


@triton.jit
def norm_gemm_kernel(out_ptr, sum_ptr, x_ptr, res_ptr, g_ptr, w_ptr, bias_ptr, eps, M,
                     X_STRIDE: tl.constexpr, RES_STRIDE: tl.constexpr, SUM_STRIDE: tl.constexpr,
                     OUT_STRIDE: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                     HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                     PDL: tl.constexpr = 0):
    """small_m_gemm_kernel on rmsnorm(x (+ res)) * g, the norm folded into the K loop: the
    row's sum of squares accumulates beside (x * g) @ w.T, which is scaled by the row's
    1 / rms at the end. With HAS_RES, program 0 also stores the rounded sum x + res."""
    enter(PDL)
    rows = tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    sum_rows = tl.where(tl.program_id(0) == 0, M, 0)  # program 0 stores the residual sum
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    squares = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x_ok = row_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * X_STRIDE + k[None, :], mask=x_ok,
                    other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(res_ptr + rows[:, None] * RES_STRIDE + k[None, :], mask=x_ok,
                        other=0.0).to(tl.float32)
            total = (x + r).to(sum_ptr.dtype.element_ty)
            tl.store(sum_ptr + rows[:, None] * SUM_STRIDE + k[None, :], total,
                     mask=(rows < sum_rows)[:, None] & k_ok[None, :])
            x = total.to(tl.float32)
        squares += tl.sum(x * x, axis=1)
        g = tl.load(g_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        a = (x * g[None, :]).to(w_ptr.dtype.element_ty)
        w = _weight_tile(w_ptr, cols64, k, k_ok, col_ok, N, K, BLOCK_N, BLOCK_K)
        acc = mma(a, w, acc, IEEE)
    acc = acc * tl.math.rsqrt(squares / K + eps)[:, None]
    _store_rows(out_ptr, acc, bias_ptr, rows, cols, row_ok, col_ok, OUT_STRIDE, HAS_BIAS)


def _constexprs(config: tuple, n: int, k: int, bias: bool, scaled: bool, dtype: str,
                x_stride: int, out_stride: int) -> dict:
    block_n, block_k = config[:2]
    return dict(X_STRIDE=x_stride, OUT_STRIDE=out_stride, N=n, K=k, HAS_BIAS=bias, SCALED=scaled,
                BLOCK_M=SMALL_M, BLOCK_N=block_n, BLOCK_K=max(16, min(block_k, triton.next_power_of_2(k))),
                IEEE=dtype == "float32" and not scaled)


def _norm_constexprs(config: tuple, n: int, k: int, bias: bool, dtype: str, x_stride: int,
                     out_stride: int, res_stride: int | None, sum_stride: int | None) -> dict:
    """norm_gemm_kernel's constexprs; `res_stride` None: no residual."""
    consts = _constexprs(config, n, k, bias, False, dtype, x_stride, out_stride)
    del consts["SCALED"]
    return dict(consts, RES_STRIDE=res_stride or 0, SUM_STRIDE=sum_stride or 0,
                HAS_RES=res_stride is not None)


def small_m_alternatives(ctx, x: str, w: str, out: str, bias: str | None,
                         scales: tuple[str, str] | None = None) -> list[dict]:
    """The Gemm alternatives of out = x @ w.T (+ bias) for M <= SMALL_M; `scales`: FP8's
    (a_scale, w_scale) values."""
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    alternatives = []
    for config in SMALL_CONFIGS_FP8 if scales else SMALL_CONFIGS:
        unused = ctx.ptr(w)  # stands in for an absent operand: never read
        launch = ctx.make_launch(
            small_m_gemm_kernel, grid=(-(-n // config[0]),), num_warps=config[2],
            num_stages=config[3],
            args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                      bias_ptr=ctx.ptr(bias) if bias else unused,
                      a_scale_ptr=ctx.ptr(scales[0]) if scales else unused,
                      w_scale_ptr=ctx.ptr(scales[1]) if scales else unused,
                      M=I32(ctx.rows(out))),
            constexprs=_constexprs(config, n, k, bias is not None, scales is not None,
                                   ctx.dtype(out), ctx.row_stride(x), ctx.row_stride(out)))
        alternatives.append({"max_m": SMALL_M, "steps": [launch]})
    return alternatives


def norm_alternatives(ctx, norm: dict, w: str, out: str, bias: str | None) -> list[dict]:
    """The Gemm alternatives of out = rmsnorm(x (+ res)) @ w.T (+ bias) in one kernel each
    (norm_gemm_kernel, one per NORM_CONFIGS), for M <= SMALL_M; `norm` as fold_norm records it."""
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    x, res, total = norm["x"], norm["res"], norm["sum"]
    unused = ctx.ptr(w)  # stands in for an absent operand: never read or written
    alternatives = []
    for config in NORM_CONFIGS:
        launch = ctx.make_launch(
            norm_gemm_kernel, grid=(-(-n // config[0]),), num_warps=config[2],
            num_stages=config[3],
            args=dict(out_ptr=ctx.ptr(out), sum_ptr=ctx.ptr(total) if res else unused,
                      x_ptr=ctx.ptr(x), res_ptr=ctx.ptr(res) if res else unused,
                      g_ptr=ctx.ptr(norm["g"]), w_ptr=ctx.ptr(w),
                      bias_ptr=ctx.ptr(bias) if bias else unused, eps=F32(norm["eps"]),
                      M=I32(ctx.rows(out))),
            constexprs=_norm_constexprs(config, n, k, bias is not None, ctx.dtype(out),
                                        ctx.row_stride(x), ctx.row_stride(out),
                                        ctx.row_stride(res) if res else None,
                                        ctx.row_stride(total) if res else None))
        alternatives.append({"max_m": SMALL_M, "steps": [launch]})
    return alternatives


def fold_norm(ctx, node, launch, x: str, res: str | None, total: str | None, g: str,
              eps: float) -> bool:
    """Leaves the rmsnorm `launch` of a node marked `fold_into_next` (passes/
    fold_norms_into_linears.py, which also keeps x and res alive through the linear) to the
    linear right after it: the GEMM then runs the norm as its cuBLASLt prologue and first in
    each small-M alternative, and offers norm_gemm_kernel beside them."""
    if not node.attrs.get("fold_into_next"):
        return False
    nxt = ctx.next_node
    if nxt is None or nxt.op != "linear" or nxt.inputs[0] != node.outputs[0]:
        raise ValueError(f"{ctx.label}: marked fold_into_next, but {node.outputs[0]} does not "
                         "feed the next node's linear")
    ctx.folded_norms[node.outputs[0]] = {"launch": launch, "x": x, "res": res, "sum": total,
                                         "g": g, "eps": eps}
    return True


def plan_linear(node, ctx):
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) == 3 else None
    (out,) = node.outputs
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    alternatives, prologue = small_m_alternatives(ctx, x, w, out, bias), []
    norm = ctx.folded_norms.pop(x, None)
    if norm is not None:
        prologue = [norm["launch"]]
        alternatives = [{"max_m": alt["max_m"], "steps": prologue + alt["steps"]}
                        for alt in alternatives] + norm_alternatives(ctx, norm, w, out, bias)
    ctx.gemm(Gemm(a=ctx.ref(x)[0], w=ctx.ref(w)[0], out=ctx.ref(out)[0],
                  bias=ctx.ref(bias)[0] if bias else None, m=ctx.rows(out), n=n, k=k,
                  lda=ctx.row_stride(x), ldc=ctx.row_stride(out), dtype=ctx.dtype(out),
                  alternatives=alternatives, prologue=prologue))


# -- direct launches ----------------------------------------------------------------------------

def linear_small_m(x, w, bias=None, config: int = 0, out=None, scales=None, dtype=None):
    """The M <= SMALL_M alternative `config` (an index into SMALL_CONFIGS, or SMALL_CONFIGS_FP8
    with `scales` = (a_scale, w_scale) float32 [1] tensors for FP8 x and w) on torch tensors;
    `dtype`: out's, when x is FP8."""
    m, k = x.shape
    n = w.shape[0]
    if m > SMALL_M:
        raise ValueError(f"the small-M GEMM takes at most {SMALL_M} rows, got {m}")
    out = x.new_empty((m, n), dtype=dtype or x.dtype) if out is None else out
    cfg = (SMALL_CONFIGS_FP8 if scales else SMALL_CONFIGS)[config]
    unused = w
    direct(small_m_gemm_kernel, x)[(-(-n // cfg[0]),)](
        out, x, w, unused if bias is None else bias, *(scales or (unused, unused)), m,
        **_constexprs(cfg, n, k, bias is not None, scales is not None,
                      str(out.dtype).split(".")[1], x.stride(0), out.stride(0)),
        num_warps=cfg[2], num_stages=cfg[3])
    return out


def linear_norm_small_m(x, g, w, eps: float, res=None, bias=None, config: int = 0, out=None,
                        total=None):
    """norm_gemm_kernel with configuration `config` (an index into SMALL_CONFIGS) on torch
    tensors: out = rmsnorm(x (+ res)) * g @ w.T (+ bias); with `res`, `total` (made when None)
    receives x + res. Returns (out, total)."""
    m, k = x.shape
    n = w.shape[0]
    if m > SMALL_M:
        raise ValueError(f"the small-M GEMM takes at most {SMALL_M} rows, got {m}")
    out = x.new_empty((m, n)) if out is None else out
    if res is not None and total is None:
        total = x.new_empty(x.shape)
    cfg = SMALL_CONFIGS[config]
    direct(norm_gemm_kernel, x)[(-(-n // cfg[0]),)](
        out, w if total is None else total, x, w if res is None else res, g, w,
        w if bias is None else bias, eps, m,
        **_norm_constexprs(cfg, n, k, bias is not None, str(out.dtype).split(".")[1],
                           x.stride(0), out.stride(0), None if res is None else res.stride(0),
                           None if total is None else total.stride(0)),
        num_warps=cfg[2], num_stages=cfg[3])
    return out, total
