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
float16 value) for the tensor cores, and out = (x @ w.T) * (a_scale * w_scale) (+ bias). Its
SWAP configurations compute (w @ x.T).T instead, 64 weight rows a warpgroup: an MMA shape
Hopper's wgmma takes, in e4m3 for FP8 (no widening) with x's 16 rows as its N.

One row (batch-1 decode) is a matrix-vector product: `gemv_kernel` streams BLOCK_N weight rows
a program on CUDA cores, with no 16-row tile of which 15 rows are padding, and can take in the
kernel before the GEMM (its prologue, folded by passes/fold_into_linears.py): an RMSNorm, with
or without the residual add, or SiLU-mul. Those are then no launch of their own at M = 1; at
other M the folded kernel runs first in each alternative and before cuBLASLt. For linear_fp8
it also takes in the quantization of x (QUANTIZE: x rounded to e4m3 in the kernel, after the
norm or SiLU-mul of the quantization kernel folded into it). A gate/up GEMM takes in the
SiLU-mul after it instead (its epilogue, GLU; for linear_fp8 the SiLU-mul quantized to e4m3 for
the down projection): the one-row and small-M kernels then write silu(gate) * up, each also
offered before the SiLU-mul's own launch, which also follows cuBLASLt.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.rounding import INTERPRETED, to_e4m3
from kiln.builder.kernels.spec import F32, I32, Gemm, Launch
from kiln.builder.ops.linear import operands, residual_of

SMALL_M = 16
# (BLOCK_N, BLOCK_K, num_warps, num_stages, SWAP): the alternatives offered for M <= SMALL_M,
# for 16-bit weights and, twice as deep in K for the same bytes a step, for FP8 ones. Each set
# holds the configurations that came out best on some Llama-3.1-8B layer at M = 1 on the H100
# (tests/gpu/gemm_sweep.py): no one of them is best on every shape. SWAP ones multiply
# w @ x.T: 64 weight rows a warpgroup are the MMA's M, which Hopper's wgmma takes (FP8 in e4m3
# itself, no widening), x's 16 rows its N.
SMALL_CONFIGS = ((16, 256, 4, 4, False), (32, 128, 4, 4, False), (16, 512, 4, 3, False),
                 (16, 128, 2, 6, False), (64, 128, 4, 4, True))
SMALL_CONFIGS_FP8 = ((16, 512, 4, 4, False), (32, 256, 4, 4, False), (16, 256, 2, 6, False),
                     (64, 256, 4, 3, False), (64, 256, 4, 4, True), (128, 128, 4, 4, True))
# (BLOCK_N, BLOCK_K, num_warps) of the one-row alternatives (gemv_kernel): 8, 16 and 4 KiB of
# weight a program per step (32, 64 and 32 values a thread), 512 to 1,024 programs for a
# 4096-wide layer.
GEMV_CONFIGS = ((8, 512, 4), (8, 1024, 4), (4, 512, 2))
# FP8 weights (read as words of four e4m3 values): the best of each Llama-3.1-8B layer at M = 1
# on the H200 (tests/gpu/gemm_sweep.py --one-row-fp8: o and down 8 x 1024, q/k/v 8 x 512,
# gate/up 16 x 512), and 16 rows a program, over which a folded prologue's work on x (the same
# in every program) is shared.
GEMV_CONFIGS_FP8 = ((8, 1024, 4), (8, 512, 4), (16, 512, 4), (16, 1024, 8))
# gemv_kernel's PROLOGUE: what x is turned into before the product (constexprs, so the kernel
# can compare with them).
PLAIN, NORM, ADD_NORM, SILU_MUL, SILU_MUL_PAIRS = (tl.constexpr(p) for p in range(5))
# GLU's values: no SiLU-mul after the GEMM; after it over [gate; up] rows (the program gathers
# its outputs' gate and up rows); after it over rows in pairs (gate j, up j: passes/fuse_gate_up).
NO_GLU, GLU_HALVES, GLU_PAIRS = 0, 1, 2


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b; IEEE: in full float32 (float32 models), else the inputs' tensor-core rate."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def small_m_gemm_kernel(out_ptr, x_ptr, w_ptr, bias_ptr, a_scale_ptr, w_scale_ptr, act_ptr,
                        act_scale_ptr, out_res_ptr, M, X_STRIDE: tl.constexpr,
                        OUT_STRIDE: tl.constexpr,
                        N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                        SCALED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr = 0,
                        GLU: tl.constexpr = 0, ACT_STRIDE: tl.constexpr = 0,
                        OUT_RES_STRIDE: tl.constexpr = 0, PDL: tl.constexpr = 0):
    """Rows 0..M-1 (M <= BLOCK_M) of out, columns block program_id(0), over the whole K: x @ w.T,
    or with SWAP (w @ x.T).T. SCALED: FP8 operands, widened to float16 for x @ w.T (every e4m3
    value is a float16 value) and multiplied in e4m3 with SWAP (on Hopper, wgmma's e4m3 MMA,
    whose own sums keep fewer bits than float32: each MMA's is added to the float32
    accumulator, as cuBLASLt does without fast accumulation, not all of K summed inside it).
    GLU: the SiLU-mul after the GEMM too, written to act (glu_store); the program then takes
    BLOCK_N / 2 outputs' gate and up rows, interleaved, and out is not written. OUT_RES_STRIDE
    (> 0: the row stride of out_res): out is then the product rounded to out's dtype plus the
    residual out_res, rounded again (a linear with a residual: ops/linear.py)."""
    enter(PDL)
    rows = tl.arange(0, BLOCK_M)
    cols, col_ok = _columns(N, BLOCK_N, GLU)
    row_ok = rows < M
    cols64 = cols.to(tl.int64)
    EVEN: tl.constexpr = K % BLOCK_K == 0 and N % BLOCK_N == 0
    if SWAP:
        acc_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            x_t = tl.load(x_ptr + rows[None, :] * X_STRIDE + k[:, None],
                          mask=row_ok[None, :] & k_ok[:, None], other=0.0)
            if EVEN:
                w = tl.load(w_ptr + cols64[:, None] * K + k[None, :])
            else:
                w = tl.load(w_ptr + cols64[:, None] * K + k[None, :],
                            mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            if SCALED:  # each MMA's sum (32 products) added to acc_t in float32
                acc_t = tl.dot(w, x_t, acc_t, max_num_imprecise_acc=32)
            else:
                acc_t = mma(w, x_t, acc_t, IEEE)
        acc = tl.trans(acc_t)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            x = tl.load(x_ptr + rows[:, None] * X_STRIDE + k[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if EVEN:
                w = tl.load(w_ptr + cols64[None, :] * K + k[:, None])
            else:
                w = tl.load(w_ptr + cols64[None, :] * K + k[:, None],
                            mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if SCALED:
                x = x.to(tl.float16)
                w = w.to(tl.float16)
            acc = mma(x, w, acc, IEEE)
    if SCALED:
        acc = acc * (tl.load(a_scale_ptr) * tl.load(w_scale_ptr))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GLU:
        y = tl.reshape(acc.to(out_ptr.dtype.element_ty).to(tl.float32),
                       [BLOCK_M, BLOCK_N // 2, 2])
        j = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        glu_store(y, act_ptr + rows[:, None] * ACT_STRIDE + j[None, :], act_scale_ptr,
                  row_ok[:, None] & (j < N // 2)[None, :], out_ptr.dtype.element_ty)
    else:
        mask = row_ok[:, None] & col_ok[None, :]
        y = acc.to(out_ptr.dtype.element_ty)
        if OUT_RES_STRIDE:
            r = tl.load(out_res_ptr + rows[:, None] * OUT_RES_STRIDE + cols[None, :], mask=mask,
                        other=0.0)
            y = (y.to(tl.float32) + r.to(tl.float32)).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * OUT_STRIDE + cols[None, :], y, mask=mask)


@triton.jit
def _columns(N: tl.constexpr, BLOCK_N: tl.constexpr, GLU: tl.constexpr):
    """(the weight rows of program_id(0), which of them exist): BLOCK_N consecutive ones (also
    with GLU_PAIRS, whose rows are BLOCK_N / 2 gate and up pairs already), or with GLU_HALVES
    (w's first N / 2 rows the gates) BLOCK_N / 2 gate and up pairs gathered, interleaved."""
    if GLU == 1:
        pair = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N) // 2
        return pair + (tl.arange(0, BLOCK_N) % 2) * (N // 2), pair < N // 2
    else:
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        return cols, cols < N


@triton.jit
def glu_store(y, act_ptrs, act_scale_ptr, mask, DT: tl.constexpr):
    """Stores silu(gate) * up of y ([..., 2]: gate and up interleaved, float32 holding the
    GEMM's output rounded to DT) to act_ptrs as silu_mul_kernel rounds it; an e4m3 act is then
    quantized with act_scale as silu_mul_quant's fp8_rows_kernel quantizes it."""
    gate, up = tl.split(y)
    act = (gate / (1.0 + tl.exp(-gate))).to(DT).to(tl.float32)
    value = (act * up).to(DT)
    if act_ptrs.dtype.element_ty == tl.float8e4nv:
        inv = tl.math.div_rn(1.0, tl.load(act_scale_ptr))
        tl.store(act_ptrs, to_e4m3(value.to(tl.float32), inv, tl.float8e4nv), mask=mask)
    else:
        tl.store(act_ptrs, value, mask=mask)


@triton.jit
def _weight_tile(w_rows, k0, col_ok, K: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """w[cols, k0:k0 + BLOCK_K] (w_rows: the rows' starts). Past the last tile, EVEN reads the
    last one again (from cache; never used), the other case masks it off."""
    if EVEN:
        k = tl.minimum(k0, K - BLOCK_K) + tl.arange(0, BLOCK_K)
        return tl.load(w_rows + k[None, :])
    else:
        k = k0 + tl.arange(0, BLOCK_K)
        return tl.load(w_rows + k[None, :], mask=col_ok[:, None] & (k < K)[None, :], other=0.0)


# Four e4m3 values (one 32-bit word, the first in its low byte) widened to float32: two
# conversions to float16 pairs, then four to float32.
_E4M3X4_TO_F32 = tl.constexpr("""{
.reg .b16 lo, hi;
.reg .b32 p, q;
.reg .f16 h<4>;
mov.b32 {lo, hi}, $4;
cvt.rn.f16x2.e4m3x2 p, lo;
cvt.rn.f16x2.e4m3x2 q, hi;
mov.b32 {h0, h1}, p;
mov.b32 {h2, h3}, q;
cvt.f32.f16 $0, h0;
cvt.f32.f16 $1, h1;
cvt.f32.f16 $2, h2;
cvt.f32.f16 $3, h3;
}""")


@triton.jit
def _e4m3_words(w):
    """The four float32 values of each 32-bit word of e4m3 values in w, lowest byte first: in
    PTX on the GPU; byte by byte in Triton's interpreter, which has no inline assembly."""
    if INTERPRETED:
        return (_e4m3_byte(w, 0), _e4m3_byte(w, 8), _e4m3_byte(w, 16), _e4m3_byte(w, 24))
    else:
        return tl.inline_asm_elementwise(
            _E4M3X4_TO_F32, "=r,=r,=r,=r,r", [w],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def _e4m3_byte(w, SHIFT: tl.constexpr):
    return ((w >> SHIFT) & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.jit
def _gemv_step(acc, squares, w, k, x_ptr, res_ptr, sum_ptr, g_ptr, K: tl.constexpr, sum_k,
               inv_rms, inv_scale, PROLOGUE: tl.constexpr, QUANTIZE: tl.constexpr,
               DT: tl.constexpr, Q_TYPE: tl.constexpr):
    """(acc + w * a, squares): a the GEMM's input at positions k (gemv_kernel's prologue, then
    its quantization), w ([BLOCK_N, len(k)] float32) the weight there; squares gains the
    squares NORM and ADD_NORM sum when not quantizing."""
    k_ok = k < K
    if PROLOGUE == SILU_MUL_PAIRS:  # x's gate j and up j side by side
        a = tl.load(x_ptr + 2 * k, mask=k_ok, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + 2 * k + 1, mask=k_ok, other=0.0).to(tl.float32)
    else:
        a = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        if PROLOGUE == SILU_MUL:
            up = tl.load(x_ptr + K + k, mask=k_ok, other=0.0).to(tl.float32)
    if PROLOGUE == SILU_MUL or PROLOGUE == SILU_MUL_PAIRS:
        act = (a / (1.0 + tl.exp(-a))).to(DT).to(tl.float32)
        a = (act * up).to(DT).to(tl.float32)
    if PROLOGUE == ADD_NORM:
        r = tl.load(res_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        total = (a + r).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + k, total, mask=k < sum_k)
        a = total.to(tl.float32)
    if PROLOGUE == NORM or PROLOGUE == ADD_NORM:
        gamma = tl.load(g_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        if QUANTIZE:
            a = (gamma * (a * inv_rms).to(DT).to(tl.float32)).to(DT).to(tl.float32)
        else:
            squares += a * a
            a = a * gamma
    if QUANTIZE:
        a = to_e4m3(a, inv_scale, Q_TYPE).to(tl.float32)
    return acc + w * a[None, :], squares


@triton.jit
def gemv_kernel(out_ptr, sum_ptr, x_ptr, res_ptr, g_ptr, w_ptr, bias_ptr, a_scale_ptr, w_scale_ptr,
                act_ptr, act_scale_ptr, out_res_ptr, eps, N: tl.constexpr, K: tl.constexpr,
                PROLOGUE: tl.constexpr,
                QUANTIZE: tl.constexpr, SCALED: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GLU: tl.constexpr = 0,
                OUT_RES: tl.constexpr = 0, PDL: tl.constexpr = 0):
    """Row 0 of out, columns block program_id(0): prologue(x[0]) @ w.T (+ bias), the products
    summed in float32 on CUDA cores (partial sums a column of the weight tile, reduced once at
    the end).

    PROLOGUE (x's first row turned into the GEMM's input a, as the kernel it replaces computes it):
      PLAIN     a = x
      NORM      a = rmsnorm(x) * g: the sum of squares accumulates beside (x * g) @ w.T, which is
                scaled by 1 / rms at the end
      ADD_NORM  the same on t = x + res (rounded to sum's dtype); program 0 stores t to sum_ptr
      SILU_MUL  a = silu(x[:K]) * x[K:2K], rounded as silu_mul_kernel rounds it
      SILU_MUL_PAIRS  the same of x[0::2] and x[1::2] (the gate/up rows in pairs)
    QUANTIZE: a is then rounded to e4m3 with 1 / a_scale, as the FP8 quantization kernels do
    (quant.py: their norms round as rmsnorm_quant_kernel does, so 1 / rms is found first, in a
    pass over x that the main loop then reads again from cache). SCALED: FP8 operands (x already
    e4m3 without QUANTIZE), out = (a @ w.T) * (a_scale * w_scale) (+ bias).
    GLU: the SiLU-mul after the GEMM too (a gate/up GEMM, w's first N / 2 rows the gates, or
    with GLU_PAIRS its rows in gate and up pairs): act receives silu(gate) * up (glu_store:
    rounded as silu_mul_kernel rounds y, e4m3 with act_scale as silu_mul_quant quantizes it),
    and out is not written; the program takes its BLOCK_N / 2 outputs' gate and up rows,
    interleaved. OUT_RES: out is the product rounded to out's dtype plus out_res's row 0 (the
    residual of a linear with one: ops/linear.py), rounded again.

    An e4m3 weight is read as 32-bit words of four values (PACKED), widened by _e4m3_words
    (inline PTX on the GPU: Triton's own conversion unpacks every byte first and re-packs
    pairs, which made the loop issue-bound below the memory's rate). Word i of a row then
    meets a at 4i, 4i + 1, 4i + 2 and 4i + 3, computed as four strided vectors.
    """
    PACKED: tl.constexpr = w_ptr.dtype.element_ty == tl.float8e4nv and K % 4 == 0
    P: tl.constexpr = 4 if PACKED else 1  # weight values a loaded element
    WK: tl.constexpr = BLOCK_K // P
    EVEN: tl.constexpr = K % BLOCK_K == 0 and N % BLOCK_N == 0
    cols, col_ok = _columns(N, BLOCK_N, GLU)
    if PACKED:
        w_rows = w_ptr.to(tl.pointer_type(tl.int32)) + cols.to(tl.int64)[:, None] * (K // 4)
    else:
        w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
    # The weight is no kernel's output: its first tile is read while the kernel waits for the
    # kernel before it (PDL), and each later tile one step ahead of its use.
    w_next = _weight_tile(w_rows, 0, col_ok, K // P, WK, EVEN)
    enter(PDL)
    DT = out_ptr.dtype.element_ty
    Q_TYPE = w_ptr.dtype.element_ty
    NORMED: tl.constexpr = PROLOGUE == NORM or PROLOGUE == ADD_NORM
    sum_k = tl.where(tl.program_id(0) == 0, K, 0)  # program 0 stores the residual sum
    acc = tl.zeros([BLOCK_N, WK], dtype=tl.float32)
    squares = tl.zeros([WK], dtype=tl.float32)
    inv_rms = 1.0
    if QUANTIZE and NORMED:
        first = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            if PROLOGUE == ADD_NORM:
                r = tl.load(res_ptr + k, mask=k < K, other=0.0).to(tl.float32)
                a = (a + r).to(sum_ptr.dtype.element_ty).to(tl.float32)
            first += a * a
        inv_rms = tl.math.rsqrt(tl.sum(first, axis=0) / K + eps)
    inv_scale = 1.0
    if QUANTIZE:
        inv_scale = tl.math.div_rn(1.0, tl.load(a_scale_ptr))
    for k0 in range(0, K, BLOCK_K):
        w = w_next
        w_next = _weight_tile(w_rows, (k0 + BLOCK_K) // P, col_ok, K // P, WK, EVEN)
        if PACKED:
            k = k0 + 4 * tl.arange(0, WK)
            w0, w1, w2, w3 = _e4m3_words(w)
            if x_ptr.dtype.element_ty == tl.float8e4nv:  # PLAIN: x's words widened alike
                xw = tl.load(x_ptr.to(tl.pointer_type(tl.int32)) + k // 4, mask=k < K, other=0)
                a0, a1, a2, a3 = _e4m3_words(xw)
                acc += w0 * a0[None, :]
                acc += w1 * a1[None, :]
                acc += w2 * a2[None, :]
                acc += w3 * a3[None, :]
            else:
                acc, squares = _gemv_step(acc, squares, w0, k, x_ptr, res_ptr, sum_ptr, g_ptr,
                                          K, sum_k, inv_rms, inv_scale, PROLOGUE, QUANTIZE, DT,
                                          Q_TYPE)
                acc, squares = _gemv_step(acc, squares, w1, k + 1, x_ptr, res_ptr, sum_ptr,
                                          g_ptr, K, sum_k, inv_rms, inv_scale, PROLOGUE,
                                          QUANTIZE, DT, Q_TYPE)
                acc, squares = _gemv_step(acc, squares, w2, k + 2, x_ptr, res_ptr, sum_ptr,
                                          g_ptr, K, sum_k, inv_rms, inv_scale, PROLOGUE,
                                          QUANTIZE, DT, Q_TYPE)
                acc, squares = _gemv_step(acc, squares, w3, k + 3, x_ptr, res_ptr, sum_ptr,
                                          g_ptr, K, sum_k, inv_rms, inv_scale, PROLOGUE,
                                          QUANTIZE, DT, Q_TYPE)
        else:
            acc, squares = _gemv_step(acc, squares, w.to(tl.float32), k0 + tl.arange(0, BLOCK_K),
                                      x_ptr, res_ptr, sum_ptr, g_ptr, K, sum_k, inv_rms,
                                      inv_scale, PROLOGUE, QUANTIZE, DT, Q_TYPE)
    y = tl.sum(acc, axis=1)
    if NORMED and not QUANTIZE:
        y = y * tl.math.rsqrt(tl.sum(squares, axis=0) / K + eps)
    if SCALED:
        y = y * (tl.load(a_scale_ptr) * tl.load(w_scale_ptr))
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if GLU:
        j = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        glu_store(tl.reshape(y.to(DT).to(tl.float32), [BLOCK_N // 2, 2]), act_ptr + j,
                  act_scale_ptr, j < N // 2, DT)
    else:
        if OUT_RES:
            r = tl.load(out_res_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y.to(DT).to(tl.float32) + r
        tl.store(out_ptr + cols, y.to(DT), mask=col_ok)


def _glu(glu: bool, epilogue: dict | None) -> int:
    """A GEMM kernel's GLU for an epilogue taken inside (`glu`) or not."""
    if not glu:
        return NO_GLU
    return GLU_PAIRS if epilogue.get("pairs") else GLU_HALVES


def _constexprs(config: tuple, n: int, k: int, bias: bool, scaled: bool, dtype: str,
                x_stride: int, out_stride: int, act_stride: int | None = None,
                block_m: int = SMALL_M, glu: int = NO_GLU, out_res_stride: int = 0) -> dict:
    """small_m_gemm_kernel's; `act_stride`: the SiLU-mul output's row stride, for `glu`;
    `out_res_stride`: the residual's, for a GEMM that adds one (0: none)."""
    block_n, block_k, _, _, swap = config
    least = 32 if scaled and swap else 16  # the K of one MMA: 32 e4m3 values, 16 of 16 bits
    return dict(X_STRIDE=x_stride, OUT_STRIDE=out_stride, N=n, K=k, HAS_BIAS=bias, SCALED=scaled,
                BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=max(least, min(block_k, triton.next_power_of_2(k))),
                IEEE=dtype == "float32" and not scaled, SWAP=swap, GLU=glu,
                ACT_STRIDE=act_stride or 0, OUT_RES_STRIDE=out_res_stride)


def _gemv_constexprs(config: tuple, n: int, k: int, prologue: int, bias: bool,
                     quantize: bool = False, scaled: bool = False, glu: int = NO_GLU,
                     out_res: bool = False) -> dict:
    return dict(N=n, K=k, PROLOGUE=int(prologue), QUANTIZE=quantize, SCALED=scaled,
                HAS_BIAS=bias, BLOCK_N=config[0],
                BLOCK_K=max(16, min(config[1], triton.next_power_of_2(k))), GLU=glu,
                OUT_RES=out_res)


def small_m_alternatives(ctx, x: str, w: str, out: str, bias: str | None,
                         scales: tuple[str, str] | None = None,
                         epilogue: dict | None = None,
                         residual: str | None = None) -> list[dict]:
    """The Gemm alternatives of out = x @ w.T (+ bias) for M <= SMALL_M; `scales`: FP8's
    (a_scale, w_scale) values. `epilogue` (take_epilogue()'s): each configuration then comes
    twice, with the SiLU-mul inside (GLU) and before the SiLU-mul's own launch. `residual`: the
    value a linear with a residual adds to its product (ops/linear.py)."""
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    unused = ctx.ptr(w)  # stands in for an absent operand: never read

    def launch(config, glu: bool) -> Launch:
        return ctx.make_launch(
            small_m_gemm_kernel, grid=(-(-n // config[0]),), num_warps=config[2],
            num_stages=config[3],
            args=dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                      bias_ptr=ctx.ptr(bias) if bias else unused,
                      a_scale_ptr=ctx.ptr(scales[0]) if scales else unused,
                      w_scale_ptr=ctx.ptr(scales[1]) if scales else unused,
                      **_act_args(ctx, epilogue if glu else None, unused),
                      out_res_ptr=ctx.ptr(residual) if residual else unused,
                      M=I32(ctx.rows(out))),
            constexprs=_constexprs(config, n, k, bias is not None, scales is not None,
                                   ctx.dtype(out), ctx.row_stride(x), ctx.row_stride(out),
                                   ctx.row_stride(epilogue["out"]) if glu else None,
                                   glu=_glu(glu, epilogue),
                                   out_res_stride=ctx.row_stride(residual) if residual else 0))

    return [{"max_m": SMALL_M, "steps": steps}
            for config in (SMALL_CONFIGS_FP8 if scales else SMALL_CONFIGS)
            for steps in _ways(lambda glu: launch(config, glu), epilogue)]


def _act_args(ctx, epilogue: dict | None, unused) -> dict:
    """act_ptr and act_scale_ptr of a GEMM kernel: the SiLU-mul's output (and FP8 scale) it
    writes with GLU, else never touched."""
    if epilogue is None:
        return dict(act_ptr=unused, act_scale_ptr=unused)
    return dict(act_ptr=ctx.ptr(epilogue["out"]),
                act_scale_ptr=ctx.ptr(epilogue["scale"]) if epilogue["scale"] else unused)


def _ways(launch, epilogue: dict | None) -> list[list[Launch]]:
    """The step lists of one configuration (launch(glu) makes its kernel): alone, or with an
    epilogue both with it inside and followed by its own launch."""
    if epilogue is None:
        return [[launch(False)]]
    return [[launch(True)], [launch(False), epilogue["launch"]]]


def gemv_alternatives(ctx, x: str, w: str, out: str, bias: str | None, folded: dict | None,
                      scales: tuple[str, str] | None = None,
                      epilogue: dict | None = None,
                      residual: str | None = None) -> list[dict]:
    """The one-row alternatives of out = prologue(x) @ w.T (+ bias), one per GEMV_CONFIGS (FP8:
    GEMV_CONFIGS_FP8, `scales` = (a_scale, w_scale), a kernel folded into it quantizing x);
    `folded`: the kernel before the GEMM as fold() records it (None: x is the GEMM's input).
    With one, each configuration is also offered after that kernel's own launch, reading x:
    each of the GEMV's programs redoes the prologue over all of x, which may cost more than
    the launch it saves. `epilogue` (take_epilogue()'s): each configuration then comes twice, with
    the SiLU-mul inside (GLU, writing its output) and before the SiLU-mul's own launch.
    `residual`: the value a linear with a residual adds to its product (OUT_RES)."""
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    unused = ctx.ptr(w)  # stands in for an absent operand: never read or written

    def launch(config, fold: dict, glu: bool = False) -> Launch:
        ptr = lambda name: ctx.ptr(fold[name]) if fold.get(name) else unused  # noqa: E731
        return ctx.make_launch(
            gemv_kernel, grid=(-(-n // config[0]),), num_warps=config[2], num_stages=3,
            args=dict(out_ptr=ctx.ptr(out), sum_ptr=ptr("sum"), x_ptr=ctx.ptr(fold["x"]),
                      res_ptr=ptr("res"), g_ptr=ptr("g"), w_ptr=ctx.ptr(w),
                      bias_ptr=ctx.ptr(bias) if bias else unused,
                      a_scale_ptr=ctx.ptr(scales[0]) if scales else unused,
                      w_scale_ptr=ctx.ptr(scales[1]) if scales else unused,
                      **_act_args(ctx, epilogue if glu else None, unused),
                      out_res_ptr=ctx.ptr(residual) if residual else unused,
                      eps=F32(fold.get("eps", 0.0))),
            constexprs=_gemv_constexprs(config, n, k, fold["prologue"], bias is not None,
                                        bool(scales) and fold is folded, scales is not None,
                                        _glu(glu, epilogue), residual is not None))

    def ways(config, fold: dict) -> list[list[Launch]]:
        return _ways(lambda glu: launch(config, fold, glu), epilogue)

    configs = GEMV_CONFIGS_FP8 if scales else GEMV_CONFIGS
    plain = {"prologue": PLAIN, "x": x}
    alternatives = [{"max_m": 1, "steps": steps}
                    for c in configs for steps in ways(c, folded or plain)]
    if folded:
        alternatives += [{"max_m": 1, "steps": [folded["launch"]] + steps}
                         for c in configs for steps in ways(c, plain)]
    return alternatives


def fold(ctx, node, launch, prologue: int, x: str, res: str | None = None,
         total: str | None = None, g: str | None = None, eps: float = 0.0,
         scale: str | None = None) -> bool:
    """Leaves `launch`, the kernel of a node marked `fold_into_next` (passes/fold_into_linears.py,
    which also keeps its inputs alive through the linear), to the linear right after it: that
    linear runs it before cuBLASLt and first in each small-M alternative, and its one-row
    alternatives compute it as their `prologue` (PLAIN, NORM, ADD_NORM or SILU_MUL, on x, res,
    g, eps; `total` receives ADD_NORM's residual sum), then, for an FP8 quantization kernel
    folded into linear_fp8, round it to e4m3 with `scale`. False for an unmarked node: the
    caller launches it."""
    if not node.attrs.get("fold_into_next"):
        return False
    nxt = ctx.next_node
    if nxt is None or nxt.op not in ("linear", "linear_fp8") or nxt.inputs[0] != node.outputs[0]:
        raise ValueError(f"{ctx.label}: marked fold_into_next, but {node.outputs[0]} does not "
                         "feed the next node's linear")
    ctx.folded[node.outputs[0]] = {"launch": launch, "prologue": prologue, "x": x, "res": res,
                                   "sum": total, "g": g, "eps": eps, "scale": scale}
    return True


def residual_args(ctx, node, epilogue: dict | None) -> dict:
    """Gemm's residual and ldr for a linear with a residual (ops/linear.py), else nothing;
    such a GEMM writes the sum, so no SiLU-mul can follow it."""
    residual = residual_of(node)
    if residual is None:
        return {}
    if epilogue is not None:
        raise ValueError(f"{ctx.label}: a GEMM that adds a residual takes no epilogue")
    return dict(residual=ctx.ref(residual)[0], ldr=ctx.row_stride(residual))


def plan_linear(node, ctx):
    x, w, *bias = operands(node, node.inputs)
    bias = bias[0] if bias else None
    residual = residual_of(node)
    (out,) = node.outputs
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    folded = ctx.folded.pop(x, None)
    prologue = [folded["launch"]] if folded else []
    epilogue = take_epilogue(node, ctx)
    alternatives = [{"max_m": alt["max_m"], "steps": prologue + alt["steps"]}
                    for alt in small_m_alternatives(ctx, x, w, out, bias, epilogue=epilogue,
                                                    residual=residual)]
    alternatives += gemv_alternatives(ctx, x, w, out, bias, folded, epilogue=epilogue,
                                      residual=residual)
    if residual is None:
        alternatives += [dict(alt, steps=prologue + alt["steps"])
                         for alt in tma_alternatives(ctx, x, w, out, bias, epilogue)]
    ctx.gemm(Gemm(a=ctx.ref(x)[0], w=ctx.ref(w)[0], out=ctx.ref(out)[0],
                  bias=ctx.ref(bias)[0] if bias else None, m=ctx.rows(out), n=n, k=k,
                  lda=ctx.row_stride(x), ldc=ctx.row_stride(out), dtype=ctx.dtype(out),
                  alternatives=alternatives, prologue=prologue,
                  epilogue=[epilogue["launch"]] if epilogue else [],
                  **residual_args(ctx, node, epilogue)))


def tma_alternatives(ctx, x: str, w: str, out: str, bias: str | None,
                     epilogue: dict | None = None) -> list[dict]:
    """The alternative for many rows (tma_gemm.py: from MIN_M rows to the build's tokens) of a
    16-bit unbiased gate/up GEMM whose SiLU-mul reads its rows in pairs, for the targets with
    TMA (SM 90 and newer; on older GPUs the executor leaves it out): the kernel writing
    silu(gate) * up (GLU), in place of cuBLASLt and the SiLU-mul's launch. The plain kernel
    is offered nowhere: on the H100, at 2,048 to 8,192 rows, it ran 1-15% behind cuBLASLt on
    every Llama-3.1-8B GEMM but q/k/v at 8,192 rows (7% ahead), gate/up's included
    (docs/results/glu-gemm-2026-12-07); in a 128/128 run on an H100 the executor kept cuBLASLt
    and the SiLU-mul's launch over the GLU at every band of M (docs/results/tma-glu-2026-12-07),
    whose run was faster with the GLU from 4,096 rows: it is preferred from
    tma_gemm.PREFERRED_FROM_M rows where the build takes that many."""
    from kiln.builder.kernels import tma_gemm
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    rows = ctx.rows(out)
    if (bias is not None or epilogue is None or not epilogue["pairs"] or epilogue["scale"]
            or max(ctx.build.targets) < tma_gemm.MIN_SM
            or ctx.build.max_num_tokens < tma_gemm.MIN_M):
        return []

    act = epilogue["out"]
    if (any(ctx.ptr(v).align % 16 for v in (x, w, act))  # TMA: 16-byte aligned bases
            or not tma_gemm.fits(n, k, ctx.row_stride(x), ctx.row_stride(act), ctx.dtype(out),
                                 True)):
        return []
    _, _, _, stages, warps, _ = tma_gemm.CONFIG_GLU
    launch = ctx.make_launch(
        tma_gemm.tma_gemm_kernel, grid=(tma_gemm.grid_formula(rows, n, True),),
        num_warps=warps, num_stages=stages,
        args=dict(out_ptr=ctx.ptr(act), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w), M=I32(rows)),
        constexprs=tma_gemm.constexprs(n, k, ctx.row_stride(x), ctx.row_stride(act), True),
        min_sm=tma_gemm.MIN_SM)
    ctx.global_scratch(launch, "NSM", tma_gemm.DESCRIPTOR_BYTES)
    alternative = {"min_m": tma_gemm.MIN_M, "max_m": ctx.build.max_num_tokens, "steps": [launch]}
    if tma_gemm.PREFERRED_FROM_M <= ctx.build.max_num_tokens:
        alternative["preferred_from_m"] = tma_gemm.PREFERRED_FROM_M
    return [alternative]


def take_epilogue(node, ctx) -> dict | None:
    """The SiLU-mul after this linear that it runs (marked fold_into_previous by
    passes/fold_into_linears.py: a silu_mul, or after a linear_fp8 an FP8 silu_mul_quant) as
    {"launch": its own kernel, "out": its output, "scale": its FP8 scale or None}; None when
    the next node is no such SiLU-mul."""
    nxt = ctx.next_node
    if nxt is None or not nxt.attrs.get("fold_into_previous"):
        return None
    from kiln.builder.kernels.elementwise import act_mul_launch
    from kiln.builder.kernels.quant import FP8, fp8_rows_launch
    if nxt.inputs[0] != node.outputs[0]:
        raise ValueError(f"{ctx.label}: the next node is marked fold_into_previous, but does not "
                         f"read {node.outputs[0]}")
    if nxt.op == "silu_mul":
        epilogue = {"launch": act_mul_launch(nxt, ctx), "scale": None,
                    "pairs": bool(nxt.attrs.get("pairs"))}
    elif nxt.op == "silu_mul_quant" and nxt.attrs.get("qdtype") == FP8 and len(nxt.inputs) == 2:
        epilogue = {"launch": fp8_rows_launch(ctx, nxt, nxt.inputs[0], nxt.inputs[1], True),
                    "scale": nxt.inputs[1], "pairs": False}
    else:
        raise ValueError(f"{ctx.label}: the next node ({nxt.op}) is marked fold_into_previous, "
                         "but a GEMM takes in only a SiLU-mul or an FP8 SiLU-mul quantization")
    epilogue["out"] = nxt.outputs[0]
    ctx.epilogues[epilogue["out"]] = epilogue["launch"]
    return epilogue


# -- direct launches ----------------------------------------------------------------------------

def glu_out(x, n: int, rows: int, dtype, glu: bool, act_scale, out):
    """(the tensor the kernel writes, the one whose dtype is the GEMM's: out, or with GLU an
    empty one) of a direct launch; with GLU, `out` is the SiLU-mul's output (made when None:
    e4m3 with `act_scale`)."""
    import torch
    dt = dtype or x.dtype
    if not glu:
        return (x.new_empty((rows, n), dtype=dt) if out is None else out), None
    if out is None:
        out = x.new_empty((rows, n // 2),
                          dtype=torch.float8_e4m3fn if act_scale is not None else dt)
    return out, x.new_empty((1,), dtype=dt)


def linear_small_m(x, w, bias=None, config: int = 0, out=None, scales=None, dtype=None,
                   glu: bool = False, act_scale=None, block_m: int = SMALL_M,
                   pairs: bool = False, out_res=None):
    """The M <= SMALL_M alternative `config` (an index into SMALL_CONFIGS, or SMALL_CONFIGS_FP8
    with `scales` = (a_scale, w_scale) float32 [1] tensors for FP8 x and w) on torch tensors;
    `dtype`: out's, when x is FP8. `glu`: out[M, N / 2] is silu_mul of that product y (as
    silu_mul rounds it), quantized to e4m3 by `act_scale` when given (as silu_mul_quant); with
    `pairs`, w's gate and up rows in pairs. `block_m` (a power of two of at least SMALL_M): the
    rows one program takes, all of x's. `out_res`: a residual [M, N] added to the product
    (rounded to out's dtype first, as a linear with a residual rounds it)."""
    m, k = x.shape
    n = w.shape[0]
    if m > block_m:
        raise ValueError(f"the small-M GEMM takes at most {block_m} rows, got {m}")
    out, y = glu_out(x, n, m, dtype, glu, act_scale, out)
    cfg = (SMALL_CONFIGS_FP8 if scales else SMALL_CONFIGS)[config]
    unused = w
    direct(small_m_gemm_kernel, x)[(-(-n // cfg[0]),)](
        out if y is None else y, x, w, unused if bias is None else bias,
        *(scales or (unused, unused)), out if glu else unused,
        unused if act_scale is None else act_scale, unused if out_res is None else out_res, m,
        **_constexprs(cfg, n, k, bias is not None, scales is not None,
                      str((out if y is None else y).dtype).split(".")[1], x.stride(0),
                      out.stride(0), out.stride(0) if glu else None, block_m,
                      _glu(glu, {"pairs": pairs}),
                      0 if out_res is None else out_res.stride(0)),
        num_warps=cfg[2], num_stages=cfg[3])
    return out


def linear_gemv(x, w, bias=None, config: int = 0, out=None, prologue: int = PLAIN, g=None,
                eps: float = 0.0, res=None, total=None, scales=None, dtype=None,
                glu: bool = False, act_scale=None, pairs: bool = False, out_res=None):
    """gemv_kernel with configuration `config` (an index into GEMV_CONFIGS, or GEMV_CONFIGS_FP8
    with `scales` = (a_scale, w_scale) float32 [1] tensors for an FP8 w) on torch tensors:
    out[1, N] = prologue(x[:1]) @ w.T (+ bias), the prologue's operands as gemv_kernel names
    them (`total`, made when None, receives x + res with ADD_NORM). With `scales`, an FP8 x is
    the quantized input; any other x is quantized after the prologue. `dtype`: out's, when x is
    FP8. `glu`: out[1, N / 2] = silu(y[:, :N/2]) * y[:, N/2:] of that product y, as
    silu_mul rounds it, quantized to e4m3 by `act_scale` when given (as silu_mul_quant); with
    `pairs`, of y[:, 0::2] and y[:, 1::2] (w's gate and up rows in pairs). `out_res`: a
    residual [1, N] added to the product (rounded to out's dtype first, as a linear with a
    residual rounds it). Returns (out, total)."""
    import torch
    n, k = w.shape
    out, y = glu_out(x, n, 1, dtype, glu, act_scale, out)
    if prologue == ADD_NORM and total is None:
        total = x.new_empty((1, k))
    cfg = (GEMV_CONFIGS_FP8 if scales else GEMV_CONFIGS)[config]
    quantize = scales is not None and x.dtype != torch.float8_e4m3fn
    unused = w
    direct(gemv_kernel, x)[(-(-n // cfg[0]),)](
        out if y is None else y, unused if total is None else total, x,
        unused if res is None else res, unused if g is None else g, w,
        unused if bias is None else bias, *(scales or (unused, unused)),
        out if glu else unused, unused if act_scale is None else act_scale,
        unused if out_res is None else out_res, eps,
        **_gemv_constexprs(cfg, n, k, prologue, bias is not None, quantize, scales is not None,
                           _glu(glu, {"pairs": pairs}), out_res is not None),
        num_warps=cfg[2], num_stages=3)
    return out, total
