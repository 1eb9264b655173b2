"""Quantized GEMMs: linear_w8a8 (INT8 x INT8 -> INT32 tensor cores), linear_wo (weight-only
INT8 / INT4) and linear_fp8 (cuBLASLt FP8, run by the C++ executor, with gemm.py's small-M
alternatives).

Reference: kiln.builder.ops.quant (layouts: kiln.quantize.pack), out[M, N] = x[M, K] @ w.T.
  w8a8: acc = q @ w.T in int32 (exact), out = (acc.f32 * row_scale[m] * w_scale[n] + bias).
  wo:   wd = ((u - 8) * scale + offset).to(dtype) for int4 (offset 0 where the weight has
        none; one fused multiply-add, as the reference rounds it), u * scale for int8,
        x' = (x.f32 * pre_quant_scale).to(dtype),
        out = x' @ wd.T + bias with float32 accumulation (IEEE products for float32 builds).
An int4 byte holds elements 2j (low nibble) and 2j + 1 (high nibble) of a row.

linear_w8a8: two shapes, picked per step by a `when` on the row count M: one 16-row block for
M <= 16, tiles of 128 x 128 above.

linear_wo is a Gemm, so the executor times its ways to run per M and keeps the fastest:
  - cuBLASLt on the weight dequantized into scratch by wo_dequant_kernel (bit for bit the
    reference's wd), after scale_cols_kernel's x' where there is a pre-quant scale: the Gemm's
    prologue, run only when cuBLASLt is picked; the only way for M > 256 (prefill), and for
    M > 16 where wo_mma_kernel does not take the weight;
  - wo_gemv_kernel, for 1 row, 2 rows and groups of 4 rows up to 16: CUDA-core FMAs over the
    packed words;
  - wo_mma_kernel for int4 in groups of a multiple of 64 (16-bit models), one block of 8 or
    16 rows or blocks of 32 or 64 rows up to M = 256: tensor cores on the weight dequantized
    in registers, two values an instruction (inline PTX), K split over S programs whose last
    adds the partials in a fixed order; for up to 16 rows also with each group's scale applied
    to the MMAs' sums instead (SCALE_AFTER), and with a gate/up GEMM's SiLU-mul inside (GLU);
  - wo_gemm_kernel for M <= 16: one 16-row tensor-core block, the even columns of x against
    the low nibbles and the odd ones against the high nibbles, K split over S programs (S
    fills about two waves of the GPU's SMs) and the float32 partials added in a fixed order by
    splitk_reduce_kernel (deterministic).
"""
from __future__ import annotations

import math

import triton
import triton.language as tl

from kiln.builder.errors import KilnError
from kiln.builder.ir import dtype_size
from kiln.builder.kernels.direct import direct, interpreting
from kiln.builder.kernels.gemm import glu_out, glu_store, take_epilogue
from kiln.builder.kernels.gemm import gemv_alternatives, mma, residual_args, small_m_alternatives
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.rounding import fma
from kiln.builder.kernels.spec import I32, Gemm, Ptr
from kiln.builder.kernels.symbols import evaluate
from kiln.builder.ops.linear import operands, residual_of

SMALL_M = 16
MAX_SPLITS = 16
REDUCE_BLOCK = 1024
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
WO_SMALL = (SMALL_M, 64, 128, 4, 3)
W8A8_SMALL, W8A8_LARGE = (SMALL_M, 32, 256, 4, 3), (128, 128, 64, 8, 3)
# (BLOCK_N, BLOCK_W words, num_warps, num_stages) of the GEMV; (BLOCK_N, BLOCK_K, num_warps) of the
# dequantization; the block of scale_cols_kernel.
WO_GEMV = (8, 128, 4, 1)
# One row: each is offered and the executor keeps the fastest per shape (on the H200, 8:64:2
# for wide layers, 8:256:8 for narrow ones; tests/gpu/gemm_sweep.py --gemv).
WO_GEMV_M1 = (WO_GEMV, (8, 256, 8, 1), (8, 64, 2, 1))
GEMV_MAX_M = SMALL_M
# (BLOCK_N, BLOCK_H halfwords, num_warps, num_stages, BLOCK_M, most rows M, SCALE_AFTER) of
# the int4 tensor-core kernel; the executor keeps the fastest per shape and M, cuBLASLt on the
# dequantized weight included (on the H200 at M = 1, 32:64:1 for gate/up, 64:64:2 for qkv and
# down; tests/gpu/gemm_sweep.py --mma). With 4 or 8 warps Triton issues warpgroup MMAs (wgmma),
# the dequantized weight their register operand. SCALE_AFTER: each group's scale meets the
# MMAs' sums, for few rows, where the weight's instructions are the step's: one a pair of
# weights, not three (sm_90 SASS of the loop, AWQ's groups: 1.8-2.3 instructions a weight,
# 2.5-2.7 with the weight rounded first).
WO_MMA = ((64, 64, 2, 3, 8, 8, False), (32, 64, 1, 3, 8, 8, False),
          (64, 64, 2, 3, 16, 16, False), (32, 32, 1, 3, 8, 8, True), (64, 32, 1, 3, 8, 8, True),
          (64, 64, 2, 3, 8, 8, True), (128, 32, 2, 3, 8, 8, True), (64, 64, 2, 3, 16, 16, True),
          (64, 32, 4, 3, 32, 32, False), (64, 32, 4, 3, 64, 256, False),
          (128, 32, 8, 3, 64, 256, False))
# Programs an SM wo_mma_kernel's K split aims at; the rounded-first configurations for up to
# SMALL_M rows are also offered at MMA_FEWER_PER_SM (on the H200 at M = 1, gemm_sweep.py over S:
# o 6.7 us at S = 4 against 7.2-8.7 at 9-16, down 13.3 at S = 9 against 16.4 at 16, q/k/v 8.4
# at S = 6 against 8.6 at 9, gate/up best at S = 1: 2 to 7 programs an SM by shape).
MMA_PER_SM = 6
MMA_FEWER_PER_SM = (4, 2)
WO_DEQUANT = (16, 256, 4)
SCALE_BLOCK = 1024


@triton.jit
def w8a8_kernel(out_ptr, q_ptr, row_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, M,
                Q_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr, N: tl.constexpr,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
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
def _dequant(u, s_ptr, o_ptr, cols64, col_ok, k, k_ok, c, DT: tl.constexpr, NG: tl.constexpr,
             GROUP: tl.constexpr, BITS: tl.constexpr, HAS_OFFSET: tl.constexpr,
             PER_STEP: tl.constexpr, BLOCK_K: tl.constexpr):
    """((u - 8) * scale + offset).to(DT) (int4) or (u * scale).to(DT) (int8) of a weight tile
    u [len(k), BLOCK_N] at columns k."""
    if PER_STEP:  # one group per column of the tile: [1, BLOCK_N]
        at = (cols64 * NG + (c * BLOCK_K) // GROUP)[None, :]
        ok = col_ok[None, :]
    else:
        at = cols64[None, :] * NG + (k // GROUP)[:, None]
        ok = k_ok[:, None] & col_ok[None, :]
    s = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
    if BITS == 4:
        v = u.to(tl.float32) - 8.0  # pack.INT4_SYMMETRIC_ZERO
    else:
        v = u.to(tl.float32)
    if HAS_OFFSET:
        return fma(v, s, tl.load(o_ptr + at, mask=ok, other=0.0).to(tl.float32)).to(DT)
    return (v * s).to(DT)


@triton.jit
def wo_gemm_kernel(out_ptr, partial_ptr, x_ptr, w_ptr, scales_ptr, offsets_ptr, pqs_ptr,
                   bias_ptr, M, num_splits, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                   N: tl.constexpr, K: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                   HAS_OFFSET: tl.constexpr, HAS_PQS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   PER_STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr = 0):
    """Rows block program_id(0), columns block program_id(1), K share program_id(2) of
    num_splits: the result, or with num_splits > 1 a float32 partial [split, M, N]."""
    enter(PDL)
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
            w_lo = _dequant(packed & 0xF, scales_ptr, offsets_ptr, cols64, col_ok, k, k_ok, c,
                            DT, NG, GROUP, BITS, HAS_OFFSET, PER_STEP, BLOCK_K)
            w_hi = _dequant(packed >> 4, scales_ptr, offsets_ptr, cols64, col_ok, k, k_ok, c,
                            DT, NG, GROUP, BITS, HAS_OFFSET, PER_STEP, BLOCK_K)
            x_even = _x_cols(x_ptr, pqs_ptr, rows64, row_ok, k, k_ok, X_STRIDE, HAS_PQS)
            x_odd = _x_cols(x_ptr, pqs_ptr, rows64, row_ok, k + 1, k_ok, X_STRIDE, HAS_PQS)
            acc = mma(x_even, w_lo, acc, IEEE)
            acc = mma(x_odd, w_hi, acc, IEEE)
        else:
            k = c * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = k < K
            u = tl.load(w_ptr + cols64[None, :] * K + k[:, None],
                        mask=k_ok[:, None] & col_ok[None, :], other=0)
            w = _dequant(u, scales_ptr, offsets_ptr, cols64, col_ok, k, k_ok, c, DT, NG, GROUP,
                         BITS, HAS_OFFSET, PER_STEP, BLOCK_K)
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
def _gemv_x(x_ptr, pqs_ptr, ROW: tl.constexpr, M, k, k_ok, X_STRIDE: tl.constexpr,
            HAS_PQS: tl.constexpr):
    """float32 x'[min(ROW, M - 1), k] (zero past K), x' = x times the pre-quant scale, rounded
    to x's dtype. Rows past M repeat the last one: their results are never stored."""
    x = tl.load(x_ptr + tl.minimum(M - 1, ROW) * X_STRIDE + k, mask=k_ok, other=0.0)
    if HAS_PQS:
        p = tl.load(pqs_ptr + k, mask=k_ok, other=0.0)
        x = (x.to(tl.float32) * p).to(x_ptr.dtype.element_ty)
    return x.to(tl.float32)


@triton.jit
def _value(words, zero, x, p: tl.constexpr, BITS: tl.constexpr):
    """(value p of each word - zero) * x, exactly, in float32. 4-bit values 0..4 stay in
    place (u * 16^p, below bit 23) and x is scaled by 16^-p (exact); the others are shifted
    down first."""
    if BITS == 4 and p <= 4:
        u = words & (0xF << (4 * p))
        magic = 8388608.0 + zero * (16.0 ** p)
        x = x * (1.0 / 16.0 ** p)
    else:
        u = (words >> (BITS * p)) & ((1 << BITS) - 1)
        if BITS == 8:
            u = u ^ 0x80  # int8 as offset binary: u = value + 128
        magic = 8388608.0 + zero
    return ((u | 0x4B000000).to(tl.float32, bitcast=True) - magic) * x[None, :]


@triton.jit
def _dot4(d, words, zero, x0, x1, x2, x3, p: tl.constexpr, BITS: tl.constexpr):
    """d plus values p..p + 3 of each word (minus the zero) times x0..x3, one FMA each."""
    d += _value(words, zero, x0, p, BITS)
    d += _value(words, zero, x1, p + 1, BITS)
    d += _value(words, zero, x2, p + 2, BITS)
    d += _value(words, zero, x3, p + 3, BITS)
    return d


@triton.jit
def _word_dots(words, zero, x, BITS: tl.constexpr, BLOCK_W: tl.constexpr):
    """[BLOCK_N, BLOCK_W]: each word's values minus the zero, dotted with x [BLOCK_W, 32 / BITS]
    (float32), one fused multiply-add per value. x's columns are split off within a thread;
    a value u becomes a float by bits alone: (u | 0x4B000000) is the float 2^23 + u, and
    subtracting 2^23 + zero leaves u - zero exactly."""
    d = tl.full(words.shape, -0.0, tl.float32)  # -0.0 + v * x is v * x: no add is left
    if BITS == 8:
        x_b0, x_b1 = tl.split(tl.reshape(x, [BLOCK_W, 2, 2]))  # value 2a + b
        x0, x2 = tl.split(x_b0)
        x1, x3 = tl.split(x_b1)
        d = _dot4(d, words, zero, x0, x1, x2, x3, 0, BITS)
    else:
        x_c0, x_c1 = tl.split(tl.reshape(x, [BLOCK_W, 2, 2, 2]))  # value 4a + 2b + c
        x_b0, x_b1 = tl.split(x_c0)
        x_b2, x_b3 = tl.split(x_c1)
        x0, x4 = tl.split(x_b0)
        x2, x6 = tl.split(x_b1)
        x1, x5 = tl.split(x_b2)
        x3, x7 = tl.split(x_b3)
        d = _dot4(d, words, zero, x0, x1, x2, x3, 0, BITS)
        d = _dot4(d, words, zero, x4, x5, x6, x7, 4, BITS)
    return d


@triton.jit
def _gemv_weights(words_ptr, scales_ptr, offsets_ptr, cols, col_ok, i, W_STRIDE,
                  WORDS: tl.constexpr, GROUP_WORDS: tl.constexpr, NG: tl.constexpr,
                  BITS: tl.constexpr, HAS_OFFSET: tl.constexpr):
    """The words i of columns cols ([BLOCK_N, BLOCK_W]), their groups' float32 scales, the
    zero each value is read against, and the groups' float32 offsets (the scales where the
    weight has none: never read); nothing past WORDS."""
    ok = col_ok[:, None] & (i < WORDS)[None, :]
    cols64 = cols.to(tl.int64)
    words = tl.load(words_ptr + cols64[:, None] * W_STRIDE + i[None, :], mask=ok, other=0)
    at = cols64[:, None] * NG + (i // GROUP_WORDS)[None, :]
    s = tl.load(scales_ptr + at, mask=ok, other=0.0).to(tl.float32)
    o = s
    if HAS_OFFSET:
        o = tl.load(offsets_ptr + at, mask=ok, other=0.0).to(tl.float32)
    if BITS == 4:
        zero = tl.full(words.shape, 8.0, tl.float32)  # pack.INT4_SYMMETRIC_ZERO
    else:
        zero = tl.full(words.shape, 128.0, tl.float32)  # int8 read as offset binary
    return words, s, zero, o


@triton.jit
def _gemv_row(acc, words, s, zero, o, x, BITS: tl.constexpr, BLOCK_W: tl.constexpr,
              HAS_OFFSET: tl.constexpr):
    """acc plus one row's word dots times their scales, and with offsets the offset times the
    sum of x over each word (x [BLOCK_W, PER_WORD]: reduced once, for all BLOCK_N columns)."""
    acc += _word_dots(words, zero, x, BITS, BLOCK_W) * s
    if HAS_OFFSET:
        acc += o * tl.sum(x, axis=1)[None, :]
    return acc


@triton.jit(do_not_specialize=["W_STRIDE"])
def wo_gemv_kernel(out_ptr, x_ptr, w_ptr, scales_ptr, offsets_ptr, pqs_ptr, bias_ptr, M,
                   W_STRIDE, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr, N: tl.constexpr,
                   K: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                   HAS_OFFSET: tl.constexpr, HAS_PQS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
                   PDL: tl.constexpr = 0):
    """Rows ROWS * program_id(0) on (at most ROWS of them, ROWS <= 4) of columns block
    program_id(1), on CUDA cores; consecutive programs share a weight tile, so a second group
    of rows mostly finds it in L2.

    The weight streams as 32-bit words of PER_WORD = 32 / BITS values, value p of word i being
    element i * PER_WORD + p of the row (the packing's byte order, little-endian): a tile of
    [BLOCK_N, BLOCK_W] words meets x as [BLOCK_W, PER_WORD]. A value u becomes a float by bits
    alone: (u | 0x4B000000) is the float 2^23 + u, and subtracting 2^23 + zero leaves u - zero
    exactly (zero 8 for int4, 128 for int8 read as offset binary). Each word's products with x
    are summed in float32 and scaled by its group's scale once per word; an int4 weight's
    offsets add offset * (the sum of x over the word), one more multiply-add per word."""
    enter(PDL)
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = K // PER_WORD
    GROUP_WORDS: tl.constexpr = GROUP // PER_WORD
    NG: tl.constexpr = K // GROUP
    row0 = tl.program_id(0) * ROWS
    x_ptr += row0.to(tl.int64) * X_STRIDE
    out_ptr += row0.to(tl.int64) * OUT_STRIDE
    M -= row0
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    words_ptr = w_ptr.to(tl.pointer_type(tl.uint32))
    acc0 = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    for w0 in range(0, WORDS, BLOCK_W):
        i = w0 + tl.arange(0, BLOCK_W)
        words, s, zero, o = _gemv_weights(words_ptr, scales_ptr, offsets_ptr, cols, col_ok, i,
                                          W_STRIDE, WORDS, GROUP_WORDS, NG, BITS, HAS_OFFSET)
        k = i[:, None] * PER_WORD + tl.arange(0, PER_WORD)[None, :]
        k_ok = (i < WORDS)[:, None]
        acc0 = _gemv_row(acc0, words, s, zero, o,
                         _gemv_x(x_ptr, pqs_ptr, 0, M, k, k_ok, X_STRIDE, HAS_PQS), BITS,
                         BLOCK_W, HAS_OFFSET)
        if ROWS > 1:
            acc1 = _gemv_row(acc1, words, s, zero, o,
                             _gemv_x(x_ptr, pqs_ptr, 1, M, k, k_ok, X_STRIDE, HAS_PQS), BITS,
                             BLOCK_W, HAS_OFFSET)
        if ROWS > 2:
            acc2 = _gemv_row(acc2, words, s, zero, o,
                             _gemv_x(x_ptr, pqs_ptr, 2, M, k, k_ok, X_STRIDE, HAS_PQS), BITS,
                             BLOCK_W, HAS_OFFSET)
            acc3 = _gemv_row(acc3, words, s, zero, o,
                             _gemv_x(x_ptr, pqs_ptr, 3, M, k, k_ok, X_STRIDE, HAS_PQS), BITS,
                             BLOCK_W, HAS_OFFSET)
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    DT = out_ptr.dtype.element_ty
    tl.store(out_ptr + cols, (tl.sum(acc0, axis=1) + bias).to(DT), mask=col_ok)
    if ROWS > 1:
        tl.store(out_ptr + OUT_STRIDE + cols, (tl.sum(acc1, axis=1) + bias).to(DT),
                 mask=col_ok & (tl.full([BLOCK_N], 1, tl.int32) < M))
    if ROWS > 2:
        tl.store(out_ptr + 2 * OUT_STRIDE + cols, (tl.sum(acc2, axis=1) + bias).to(DT),
                 mask=col_ok & (tl.full([BLOCK_N], 2, tl.int32) < M))
        tl.store(out_ptr + 3 * OUT_STRIDE + cols, (tl.sum(acc3, axis=1) + bias).to(DT),
                 mask=col_ok & (tl.full([BLOCK_N], 3, tl.int32) < M))


def _int4_biased_lines(magic: int) -> list[str]:
    """PTX taking one register $4 of two halfwords (elements 4i..4i + 3 and 4i + 4..4i + 7 of a
    row) to $q = the 16-bit floats 2^e + u of nibble q of each, a pair (one LOP3 a pair: u lies
    in the mantissa's low bits of (u | magic))."""
    lines = [".reg .b32 r<4>;"] + [f"shr.u32 r{q}, $4, {4 * q};" for q in (1, 2, 3)]
    return lines + [f"lop3.b32 ${q}, {f'r{q}' if q else '$4'}, 0x000F000F, {magic:#x}, 0xea;"
                    for q in range(4)]


def _asm_block(lines: list[str]) -> tl.constexpr:
    return tl.constexpr("{\n" + "\n".join(lines) + "\n}")


def _int4_dequant_asm(fma: str, magic: int, one: int, minus_zero: int) -> tl.constexpr:
    """Inline PTX for _int4_values: _int4_biased_lines, then with the group's scale $5 and
    offset $6 twice, $q the values q and q + 4 dequantized as a pair: one FMA takes 2^e + 8 off
    (exact), the next is the reference's one rounding of (u - 8) * scale + offset."""
    lines = [".reg .b32 one, bias;", f"mov.b32 one, {one:#x};", f"mov.b32 bias, {minus_zero:#x};"]
    lines += _int4_biased_lines(magic)
    lines += [f"{fma} ${q}, ${q}, one, bias;" for q in range(4)]
    lines += [f"{fma} ${q}, ${q}, $5, $6;" for q in range(4)]
    return _asm_block(lines)


# bfloat16: 128 + u, minus 136; float16: 1024 + u, minus 1032.
_INT4_BF16 = _int4_dequant_asm("fma.rn.bf16x2", 0x43004300, 0x3F803F80, 0xC308C308)
_INT4_F16 = _int4_dequant_asm("fma.rn.f16x2", 0x64006400, 0x3C003C00, 0xE408E408)


_INT4_BIASED_BF16 = _asm_block(_int4_biased_lines(0x43004300))  # 128 + u
_INT4_BIASED_F16 = _asm_block(_int4_biased_lines(0x64006400))  # 1024 + u


@triton.jit
def _int4_values(hw, s, o, DT: tl.constexpr, ASM: tl.constexpr):
    """The dequantized values q = 0..3 of each halfword of hw ([BLOCK_N, BLOCK_H] uint16,
    element 4i + q of a row being nibble q of halfword i), ((u - 8) * s + o) in DT, s and o
    [BLOCK_N, BLOCK_H] each halfword's group's: with ASM, two values an instruction (bfloat16,
    float16); else in float32, rounded once (the interpreter)."""
    if ASM:
        if DT == tl.bfloat16:
            w0, w1, w2, w3 = tl.inline_asm_elementwise(
                _INT4_BF16, "=r,=r,=r,=r,r,r,r", [hw, s, o],
                dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True, pack=2)
        else:
            w0, w1, w2, w3 = tl.inline_asm_elementwise(
                _INT4_F16, "=r,=r,=r,=r,r,r,r", [hw, s, o],
                dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=2)
    else:
        sf = s.to(tl.float32)
        of = o.to(tl.float32)
        w0 = fma((hw & 0xF).to(tl.float32) - 8.0, sf, of).to(DT)
        w1 = fma(((hw >> 4) & 0xF).to(tl.float32) - 8.0, sf, of).to(DT)
        w2 = fma(((hw >> 8) & 0xF).to(tl.float32) - 8.0, sf, of).to(DT)
        w3 = fma((hw >> 12).to(tl.float32) - 8.0, sf, of).to(DT)
    return w0, w1, w2, w3


@triton.jit
def _int4_biased(hw, DT: tl.constexpr, ASM: tl.constexpr):
    """The values q = 0..3 of each halfword of hw ([BLOCK_N, BLOCK_H] uint16) as 2^e + u in
    DT, exactly: 128 + u in bfloat16, 1024 + u in float16 (where the 16-bit float's last
    mantissa bit is worth 1). With ASM one instruction a pair; else through float32."""
    if ASM:
        if DT == tl.bfloat16:
            w0, w1, w2, w3 = tl.inline_asm_elementwise(
                _INT4_BIASED_BF16, "=r,=r,=r,=r,r", [hw],
                dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True, pack=2)
        else:
            w0, w1, w2, w3 = tl.inline_asm_elementwise(
                _INT4_BIASED_F16, "=r,=r,=r,=r,r", [hw],
                dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=2)
    else:
        base = 128.0 if DT == tl.bfloat16 else 1024.0
        w0 = ((hw & 0xF).to(tl.float32) + base).to(DT)
        w1 = (((hw >> 4) & 0xF).to(tl.float32) + base).to(DT)
        w2 = (((hw >> 8) & 0xF).to(tl.float32) + base).to(DT)
        w3 = ((hw >> 12).to(tl.float32) + base).to(DT)
    return w0, w1, w2, w3


@triton.jit
def _step_groups(ptr, cols64, col_ok, c, NG: tl.constexpr, GH: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_N, BLOCK_H]: the group value (scale or offset) of each halfword of step c, read
    once per group."""
    if BLOCK_H > GH:
        g = (c * BLOCK_H) // GH + tl.arange(0, BLOCK_H // GH)
        v = tl.load(ptr + cols64[:, None] * NG + g[None, :], mask=col_ok[:, None], other=0.0)
        return tl.reshape(tl.broadcast_to(v[:, :, None], [BLOCK_N, BLOCK_H // GH, GH]),
                          [BLOCK_N, BLOCK_H])
    else:
        v = tl.load(ptr + cols64 * NG + (c * BLOCK_H) // GH, mask=col_ok, other=0.0)
        return tl.broadcast_to(v[:, None], [BLOCK_N, BLOCK_H])


@triton.jit(do_not_specialize=["num_splits"])
def wo_mma_kernel(out_ptr, partial_ptr, count_ptr, x_ptr, w_ptr, scales_ptr, offsets_ptr,
                  pqs_ptr, bias_ptr, act_ptr, M, num_splits, X_STRIDE: tl.constexpr,
                  OUT_STRIDE: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                  GROUP: tl.constexpr, HAS_OFFSET: tl.constexpr, HAS_PQS: tl.constexpr,
                  HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_H: tl.constexpr, ASM: tl.constexpr, SCALE_AFTER: tl.constexpr = False,
                  PART_H: tl.constexpr = 0, GLU: tl.constexpr = False,
                  ACT_STRIDE: tl.constexpr = 0, PDL: tl.constexpr = 0):
    """int4 on tensor cores: rows block program_id(0) (the blocks of one column block run
    side by side, so its weight is read from memory once), columns block program_id(1), K
    share program_id(2) of num_splits. out^T [BLOCK_N, BLOCK_M] = wd [BLOCK_N, K] @ x'^T, the
    weight read as halfwords of 4 values (BLOCK_H of them a step: whole groups or part of one)
    and dequantized in registers (_int4_values, rounded as the reference rounds wd) into four
    operands, value q of each halfword meeting x's columns 4i + q. With num_splits > 1 each
    program writes its float32 partial [BLOCK_M, BLOCK_N] of the [M, N] partial of its split
    and counts itself in its (rows, columns) block's count; the last of a block adds the
    partials in split order (deterministic), writes the result and sets the count back to 0.

    SCALE_AFTER: a step is parts of PART_H halfwords within one group each (_scaled_part),
    the operands the weight's values as 2^e + u (_int4_biased, one instruction a pair, exact)
    and each group's scale and offset applied to the part's float32 sums: wd is not rounded
    to the model's dtype first, so the result is the reference's within its rounding of wd.

    GLU: the SiLU-mul after the GEMM too (a gate/up GEMM, w's first N / 2 rows the gates): a
    column block is BLOCK_N / 2 gate and up rows, interleaved, whose silu(gate) * up goes to
    act (glu_store, rounded as silu_mul_kernel rounds it); out is not written."""
    enter(PDL)
    H: tl.constexpr = K // 4
    NG: tl.constexpr = K // GROUP
    GH: tl.constexpr = GROUP // 4
    STEPS: tl.constexpr = H // BLOCK_H
    DT = out_ptr.dtype.element_ty
    tile = tl.program_id(1)
    split = tl.program_id(2)
    if GLU:
        pair = tile * (BLOCK_N // 2) + tl.arange(0, BLOCK_N) // 2
        cols = pair + (tl.arange(0, BLOCK_N) % 2) * (N // 2)
        col_ok = pair < N // 2
    else:
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
    cols64 = cols.to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    h_ptr = w_ptr.to(tl.pointer_type(tl.uint16))
    per = tl.cdiv(STEPS, num_splits)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for c in range(split * per, tl.minimum(STEPS, split * per + per)):
        if SCALE_AFTER:
            for p in tl.static_range(BLOCK_H // PART_H):
                acc = _scaled_part(acc, h_ptr, x_ptr, scales_ptr, offsets_ptr, pqs_ptr, cols64,
                                   col_ok, rows, row_ok, c * BLOCK_H + p * PART_H, H, NG, GH,
                                   X_STRIDE, HAS_OFFSET, HAS_PQS, BLOCK_N, BLOCK_M, PART_H, DT,
                                   ASM)
        else:
            i = c * BLOCK_H + tl.arange(0, BLOCK_H)
            hw = tl.load(h_ptr + cols64[:, None] * H + i[None, :], mask=col_ok[:, None],
                         other=0)
            s = _step_groups(scales_ptr, cols64, col_ok, c, NG, GH, BLOCK_N, BLOCK_H)
            if HAS_OFFSET:
                o = _step_groups(offsets_ptr, cols64, col_ok, c, NG, GH, BLOCK_N, BLOCK_H)
            else:
                o = tl.full([BLOCK_N, BLOCK_H], -0.0, DT)
            w0, w1, w2, w3 = _int4_values(hw, s, o, DT, ASM)
            x0, x1, x2, x3 = _x_quarters(x_ptr, pqs_ptr, rows, row_ok, c * BLOCK_H, X_STRIDE,
                                         HAS_PQS, BLOCK_M, BLOCK_H, DT)
            acc = tl.dot(w0, tl.trans(x0), acc)
            acc = tl.dot(w1, tl.trans(x1), acc)
            acc = tl.dot(w2, tl.trans(x2), acc)
            acc = tl.dot(w3, tl.trans(x3), acc)
    mask = col_ok[:, None] & row_ok[None, :]
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if num_splits == 1:
        _mma_out(out_ptr, act_ptr, acc + bias[:, None], rows, row_ok, cols64, mask, tile,
                 OUT_STRIDE, N, BLOCK_N, BLOCK_M, GLU, ACT_STRIDE)
    else:
        part = partial_ptr + rows[None, :] * N + cols64[:, None]
        tl.store(part + split * M * N, acc, mask=mask)
        tl.debug_barrier()
        count_ptr += tile * tl.num_programs(0) + tl.program_id(0)
        if tl.atomic_add(count_ptr, 1, sem="acq_rel") == num_splits - 1:
            tl.debug_barrier()
            total = bias[:, None] + tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            for s in range(0, num_splits):
                total += tl.load(part + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            _mma_out(out_ptr, act_ptr, total, rows, row_ok, cols64, mask, tile, OUT_STRIDE, N,
                     BLOCK_N, BLOCK_M, GLU, ACT_STRIDE)
            tl.store(count_ptr, 0)


@triton.jit
def _x_quarters(x_ptr, pqs_ptr, rows, row_ok, h0, X_STRIDE: tl.constexpr, HAS_PQS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, DT: tl.constexpr):
    """x' [BLOCK_M, 4 * BLOCK_H] from column 4 * h0 (x times the pre-quant scale, rounded to
    DT), as four [BLOCK_M, BLOCK_H]: quarter q holds columns 4i + q, those halfword i's value q
    meets."""
    k = 4 * h0 + tl.arange(0, 4 * BLOCK_H)
    x = tl.load(x_ptr + rows[:, None] * X_STRIDE + k[None, :], mask=row_ok[:, None], other=0.0)
    if HAS_PQS:
        x = (x.to(tl.float32) * tl.load(pqs_ptr + k)[None, :]).to(DT)
    x_a, x_b = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_H, 2, 2]))  # column 4i + 2a + b
    x0, x2 = tl.split(x_a)
    x1, x3 = tl.split(x_b)
    return x0, x1, x2, x3


@triton.jit
def _scaled_part(acc, h_ptr, x_ptr, scales_ptr, offsets_ptr, pqs_ptr, cols64, col_ok, rows,
                 row_ok, h0, H: tl.constexpr, NG: tl.constexpr, GH: tl.constexpr,
                 X_STRIDE: tl.constexpr, HAS_OFFSET: tl.constexpr, HAS_PQS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, PART_H: tl.constexpr,
                 DT: tl.constexpr, ASM: tl.constexpr):
    """acc plus the PART_H halfwords from h0 (within one group) of each column times x', the
    group's scale and offset applied to the MMAs' float32 sums: the operands are 2^e + u
    (_int4_biased) and s * (sum (2^e + u) x - (2^e + 8) sum x) + o * sum x is added, sum x
    taken by the same MMAs on an operand of ones."""
    i = h0 + tl.arange(0, PART_H)
    hw = tl.load(h_ptr + cols64[:, None] * H + i[None, :], mask=col_ok[:, None], other=0)
    w0, w1, w2, w3 = _int4_biased(hw, DT, ASM)
    x0, x1, x2, x3 = _x_quarters(x_ptr, pqs_ptr, rows, row_ok, h0, X_STRIDE, HAS_PQS, BLOCK_M,
                                 PART_H, DT)
    part = tl.dot(w0, tl.trans(x0))
    part = tl.dot(w1, tl.trans(x1), part)
    part = tl.dot(w2, tl.trans(x2), part)
    part = tl.dot(w3, tl.trans(x3), part)
    ones = tl.full([BLOCK_N, PART_H], 1.0, DT)
    xs = tl.dot(ones, tl.trans(x0))
    xs = tl.dot(ones, tl.trans(x1), xs)
    xs = tl.dot(ones, tl.trans(x2), xs)
    xs = tl.dot(ones, tl.trans(x3), xs)
    if DT == tl.bfloat16:
        biased_zero: tl.constexpr = 136.0  # 2^7 + 8
    else:
        biased_zero: tl.constexpr = 1032.0  # 2^10 + 8
    g = cols64 * NG + h0 // GH
    s = tl.load(scales_ptr + g, mask=col_ok, other=0.0).to(tl.float32)
    acc += s[:, None] * (part - biased_zero * xs)
    if HAS_OFFSET:
        acc += tl.load(offsets_ptr + g, mask=col_ok, other=0.0).to(tl.float32)[:, None] * xs
    return acc


@triton.jit
def _mma_out(out_ptr, act_ptr, y, rows, row_ok, cols64, mask, tile, OUT_STRIDE: tl.constexpr,
             N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, GLU: tl.constexpr,
             ACT_STRIDE: tl.constexpr):
    """Stores wo_mma_kernel's y ([BLOCK_N, BLOCK_M], out^T in float32) to out, or with GLU
    (y's rows gate and up pairs) the SiLU-mul of y rounded to out's dtype to act."""
    DT = out_ptr.dtype.element_ty
    if GLU:
        pairs = tl.permute(tl.reshape(y.to(DT).to(tl.float32), [BLOCK_N // 2, 2, BLOCK_M]),
                           (0, 2, 1))
        j = tile * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        glu_store(pairs, act_ptr + rows[None, :] * ACT_STRIDE + j[:, None], act_ptr,
                  (j < N // 2)[:, None] & row_ok[None, :], DT)
    else:
        tl.store(out_ptr + rows[None, :] * OUT_STRIDE + cols64[:, None], y.to(DT), mask=mask)


@triton.jit
def wo_dequant_kernel(out_ptr, w_ptr, scales_ptr, offsets_ptr, N: tl.constexpr,
                      K: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                      HAS_OFFSET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      PDL: tl.constexpr = 0):
    """out[N, K] = ((u - 8) * scale + offset).to(out's dtype) (int4; one fused multiply-add)
    or (u * scale).to(out's dtype) (int8): the weight cuBLASLt multiplies for M > SMALL_M, as
    the reference rounds it."""
    enter(PDL)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    NG: tl.constexpr = K // GROUP
    DT = out_ptr.dtype.element_ty
    if BITS == 4:
        j = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        ok = col_ok[:, None] & (j < K // 2)[None, :]
        packed = tl.load(w_ptr + cols64[:, None] * (K // 2) + j[None, :], mask=ok, other=0)
        at = cols64[:, None] * NG + ((2 * j) // GROUP)[None, :]  # 2j, 2j + 1: one group
        s = tl.load(scales_ptr + at, mask=ok, other=0.0).to(tl.float32)
        lo = (packed & 0xF).to(tl.float32) - 8.0  # pack.INT4_SYMMETRIC_ZERO
        hi = (packed >> 4).to(tl.float32) - 8.0
        if HAS_OFFSET:
            o = tl.load(offsets_ptr + at, mask=ok, other=0.0).to(tl.float32)
            lo = fma(lo, s, o).to(DT)
            hi = fma(hi, s, o).to(DT)
        else:
            lo = (lo * s).to(DT)
            hi = (hi * s).to(DT)
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        tl.store(out_ptr + cols64[:, None] * K + k[None, :],
                 tl.reshape(tl.join(lo, hi), [BLOCK_N, BLOCK_K]),
                 mask=col_ok[:, None] & (k < K)[None, :])
    else:
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        ok = col_ok[:, None] & (k < K)[None, :]
        u = tl.load(w_ptr + cols64[:, None] * K + k[None, :], mask=ok, other=0)
        s = tl.load(scales_ptr + cols64[:, None] * NG + (k // GROUP)[None, :], mask=ok,
                    other=0.0).to(tl.float32)
        tl.store(out_ptr + cols64[:, None] * K + k[None, :], (u.to(tl.float32) * s).to(DT),
                 mask=ok)


@triton.jit
def scale_cols_kernel(out_ptr, x_ptr, pqs_ptr, M, X_STRIDE: tl.constexpr, K: tl.constexpr,
                      BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    """out[m, :] = (x[m, :] * pre_quant_scale).to(x's dtype), rows of K contiguous."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = k < K
    x = tl.load(x_ptr + row * X_STRIDE + k, mask=ok, other=0.0)
    p = tl.load(pqs_ptr + k, mask=ok, other=0.0)
    tl.store(out_ptr + row * K + k, (x.to(tl.float32) * p).to(x_ptr.dtype.element_ty), mask=ok)


@triton.jit
def splitk_reduce_kernel(out_ptr, partial_ptr, bias_ptr, M, num_splits,
                         OUT_STRIDE: tl.constexpr, N: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    enter(PDL)
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


def wo_constexprs(cfg: tuple, n: int, k: int, bits: int, group: int, offsets: bool, pqs: bool,
                  bias: bool, dtype: str) -> dict:
    bm, bn, bk = cfg[:3]
    return dict(N=n, K=k, BITS=bits, GROUP=group, HAS_OFFSET=offsets, HAS_PQS=pqs, HAS_BIAS=bias,
                PER_STEP=group % bk == 0 or group == k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                IEEE=dtype == "float32")


def splits_formula(n: int, k: int) -> str:
    """S for M <= 16: about two programs per SM, at most one K step each at the limit."""
    bn, bk = WO_SMALL[1], WO_SMALL[2]
    return f"max(1, min({MAX_SPLITS}, {-(-k // bk)}, cdiv(2 * NSM, {-(-n // bn)})))"


def splits_for(n: int, k: int, num_sms: int) -> int:
    return evaluate(splits_formula(n, k), {"NSM": num_sms})


# -- lowering -----------------------------------------------------------------------------------

def plan_linear_fp8(node, ctx):
    q, w, x_scale, w_scale, *bias = operands(node, node.inputs)
    bias = bias[0] if bias else None
    residual = residual_of(node)
    (out,) = node.outputs
    n, k = (int(d) for d in ctx.graph.values[w].shape)
    if k % 16 or n % 16:
        raise KilnError(f"{w}: FP8 GEMMs need N and K multiples of 16 (cuBLASLt), got N={n} "
                        f"K={k}; build this model with --quant int8_sq or without --quant")
    folded = ctx.folded.pop(q, None)
    if folded and folded["scale"] != x_scale:
        raise KilnError(f"{ctx.label}: {q} is quantized with {folded['scale']}, but the GEMM "
                        f"scales it by {x_scale}")
    prologue = [folded["launch"]] if folded else []
    scales = (x_scale, w_scale)
    epilogue = take_epilogue(node, ctx)
    alternatives = [{"max_m": alt["max_m"], "steps": prologue + alt["steps"]}
                    for alt in small_m_alternatives(ctx, q, w, out, bias, scales, epilogue,
                                                    residual)]
    alternatives += gemv_alternatives(ctx, q, w, out, bias, folded, scales, epilogue, residual)
    ctx.gemm(Gemm(a=ctx.ref(q)[0], w=ctx.ref(w)[0], out=ctx.ref(out)[0],
                  bias=ctx.ref(bias)[0] if bias else None, m=ctx.rows(out), n=n, k=k,
                  lda=ctx.row_stride(q), ldc=ctx.row_stride(out), dtype=ctx.dtype(out),
                  in_dtype="float8_e4m3fn", a_scale=ctx.ref(x_scale)[0],
                  w_scale=ctx.ref(w_scale)[0], alternatives=alternatives, prologue=prologue,
                  epilogue=[epilogue["launch"]] if epilogue else [],
                  **residual_args(ctx, node, epilogue)))


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


def gemv_fits(bits: int, group: int, k: int) -> bool:
    """Whether wo_gemv_kernel takes the weight: whole 32-bit words per row and per group."""
    per_word = 32 // bits
    return k % per_word == 0 and group % per_word == 0


def mma_fits(bits: int, group: int, k: int, dtype: str) -> bool:
    """Whether wo_mma_kernel takes the weight: int4 in groups of a multiple of 64 (a step of
    at least 16 halfwords in one group), a 16-bit model."""
    return bits == 4 and group % 64 == 0 and k % group == 0 and dtype in ("bfloat16", "float16")


def mma_constexprs(n: int, k: int, group: int, offsets: bool, pqs: bool, bias: bool,
                   cfg: tuple, asm: bool = True, act_stride: int | None = None) -> dict:
    """wo_mma_kernel's; `act_stride`: the SiLU-mul output's row stride, for GLU."""
    return dict(N=n, K=k, GROUP=group, HAS_OFFSET=offsets, HAS_PQS=pqs, HAS_BIAS=bias,
                BLOCK_M=cfg[4], BLOCK_N=cfg[0], BLOCK_H=_mma_block_h(k, group, cfg), ASM=asm,
                SCALE_AFTER=cfg[6], PART_H=min(_mma_block_h(k, group, cfg), group // 4),
                GLU=act_stride is not None, ACT_STRIDE=act_stride or 0)


def _mma_block_h(k: int, group: int, cfg: tuple) -> int:
    """Halfwords a step: the configuration's, halved until the steps tile K, whole groups
    or part of one."""
    gh, bh = group // 4, cfg[1]
    while bh > gh and (k // 4) % bh:
        bh //= 2
    return bh if bh % gh == 0 or gh % bh == 0 else math.gcd(bh, gh)


def mma_splits_formula(n: int, k: int, group: int, cfg: tuple, m: str,
                       per_sm: int = MMA_PER_SM) -> str:
    """S of wo_mma_kernel at `m` rows: about `per_sm` programs per SM, at least one step each,
    and S * M <= MAX_SPLITS * SMALL_M (the partials' scratch)."""
    steps = k // 4 // _mma_block_h(k, group, cfg)
    rows = f"max(1, {m})"
    return (f"max(1, min({MAX_SPLITS}, {steps}, "
            f"cdiv({per_sm} * NSM, {-(-n // cfg[0])} * cdiv({rows}, {cfg[4]})), "
            f"{MAX_SPLITS * SMALL_M} // {rows}))")


def mma_splits(n: int, k: int, group: int, cfg: tuple, num_sms: int, m: int) -> int:
    return evaluate(mma_splits_formula(n, k, group, cfg, "M"), {"NSM": num_sms, "M": m})


def gemv_constexprs(n: int, k: int, rows: int, bits: int, group: int, offsets: bool, pqs: bool,
                    bias: bool, cfg: tuple | None = None) -> dict:
    block_n, block_w = (cfg or WO_GEMV)[:2]
    words = k * bits // 32
    return dict(N=n, K=k, BITS=bits, GROUP=group, HAS_OFFSET=offsets, HAS_PQS=pqs, HAS_BIAS=bias,
                ROWS=rows, BLOCK_N=block_n, BLOCK_W=min(block_w, triton.next_power_of_2(words)))


def plan_linear_wo(node, ctx):
    """A Gemm: cuBLASLt on the weight dequantized into scratch (the prologue; x times the
    pre-quant scale too, when there is one), with the GEMV (1 row, 2 rows, groups of 4 rows up
    to SMALL_M), the split-K tensor-core kernel (M <= SMALL_M) and, for int4 in groups of a
    multiple of 64, wo_mma_kernel (each WO_MMA configuration up to its most rows) as
    alternatives the executor times against it. With the SiLU-mul after it taken
    (take_epilogue), each runs that kernel's launch after it, and wo_mma_kernel's
    configurations for up to SMALL_M rows are offered with it inside (GLU) too. The
    rounded-first ones for up to SMALL_M rows are offered again with K split for fewer programs
    an SM (MMA_FEWER_PER_SM), each shape's best lying between 2 and 7."""
    from kiln.builder.ops.quant import _wo_operands
    at, a = _wo_operands(node), node.attrs
    x, w, scales = node.inputs[:3]
    opt = {name: node.inputs[i] for name, i in at.items()}
    (out,) = node.outputs
    n, k = int(ctx.graph.values[out].shape[-1]), ctx.width(x)
    m = ctx.rows(out)
    dtype = ctx.dtype(out)
    size = dtype_size(dtype)
    bits, group = a["bits"], a["group_size"]
    offsets, pqs, bias = "offsets" in at, "pre_quant_scale" in at, "bias" in at
    args = dict(out_ptr=ctx.ptr(out), x_ptr=ctx.ptr(x), w_ptr=ctx.ptr(w),
                scales_ptr=ctx.ptr(scales), offsets_ptr=ctx.ptr(opt.get("offsets", scales)),
                pqs_ptr=ctx.ptr(opt.get("pre_quant_scale", scales)),
                bias_ptr=ctx.ptr(opt.get("bias", scales)), M=I32(m))  # absent ones: never read
    strides = dict(X_STRIDE=ctx.row_stride(x), OUT_STRIDE=ctx.row_stride(out))
    epilogue = take_epilogue(node, ctx)
    after = [epilogue["launch"]] if epilogue else []

    alternatives = []
    if gemv_fits(bits, group, k):
        shapes = [(1, 1, cfg) for cfg in WO_GEMV_M1] + [(2, 2, WO_GEMV), (4, GEMV_MAX_M, WO_GEMV)]
        for rows, max_m, cfg in shapes:
            alternatives.append({"max_m": max_m, "steps": [ctx.make_launch(
                wo_gemv_kernel, grid=(_cdiv(m, rows), _cdiv(n, cfg[0])),
                num_warps=cfg[2], num_stages=cfg[3],
                args=dict(args, W_STRIDE=I32(k * bits // 32)),
                constexprs=dict(strides, **gemv_constexprs(n, k, rows, bits, group, offsets,
                                                           pqs, bias, cfg)))] + after})
    splits = ctx.derive(splits_formula(n, k))
    partials = ctx.scratch("quant_gemm_partials", str(MAX_SPLITS * SMALL_M * n * 4))
    _, bn, _, warps, stages = WO_SMALL
    flags = (bits, group, offsets, pqs, bias, dtype)
    alternatives.append({"max_m": SMALL_M, "steps": [
        ctx.make_launch(wo_gemm_kernel, grid=(1, _cdiv(n, bn), splits), num_warps=warps,
                        num_stages=stages,
                        args=dict(args, partial_ptr=partials, num_splits=I32(splits)),
                        constexprs=dict(strides, **wo_constexprs(WO_SMALL, n, k, *flags))),
        ctx.make_launch(splitk_reduce_kernel, grid=(m, _cdiv(n, REDUCE_BLOCK)), num_warps=4,
                        when=f"{splits} > 1",
                        args=dict(out_ptr=args["out_ptr"], partial_ptr=partials,
                                  bias_ptr=args["bias_ptr"], M=I32(m), num_splits=I32(splits)),
                        constexprs=dict(OUT_STRIDE=strides["OUT_STRIDE"], N=n, HAS_BIAS=bias,
                                        BLOCK=REDUCE_BLOCK))] + after})
    if mma_fits(bits, group, k, dtype):
        blocks = max(_cdiv(n, c[0]) * _cdiv(c[5], c[4]) for c in WO_MMA)
        counts = ctx.scratch("wo_mma_counts", str(4 * blocks), zeroed=True)

        def mma_launch(cfg, glu: bool, per_sm: int = MMA_PER_SM):
            mma_s = ctx.derive(mma_splits_formula(n, k, group, cfg, m, per_sm))
            act = ctx.row_stride(epilogue["out"]) if glu else None
            return ctx.make_launch(
                wo_mma_kernel, grid=(_cdiv(m, cfg[4]), _cdiv(n, cfg[0]), mma_s),
                num_warps=cfg[2], num_stages=cfg[3],
                args=dict(args, partial_ptr=partials, count_ptr=counts, num_splits=I32(mma_s),
                          act_ptr=ctx.ptr(epilogue["out"]) if glu else args["out_ptr"]),
                constexprs=dict(strides, **mma_constexprs(n, k, group, offsets, pqs, bias, cfg,
                                                          act_stride=act)))

        for cfg in WO_MMA:
            alternatives.append({"max_m": cfg[5], "steps": [mma_launch(cfg, False)] + after})
        alternatives += [{"max_m": cfg[5], "steps": [mma_launch(cfg, True)]}
                         for cfg in WO_MMA if epilogue and cfg[5] <= SMALL_M]
        for per_sm in MMA_FEWER_PER_SM:
            for cfg in (c for c in WO_MMA if c[5] <= SMALL_M and not c[6]):
                alternatives.append({"max_m": cfg[5],
                                     "steps": [mma_launch(cfg, False, per_sm)] + after})
                if epilogue:
                    alternatives.append({"max_m": cfg[5], "steps": [mma_launch(cfg, True, per_sm)]})

    prologue = []
    a_ref, lda = ctx.ref(x)[0], ctx.row_stride(x)
    if pqs:
        scaled = Ptr(ctx.scratch("wo_scaled_x", str(ctx.build.max_num_tokens * k * size)).ref,
                     dtype)
        prologue.append(ctx.make_launch(
            scale_cols_kernel, grid=(m, _cdiv(k, SCALE_BLOCK)), num_warps=4,
            args=dict(out_ptr=scaled, x_ptr=args["x_ptr"], pqs_ptr=args["pqs_ptr"], M=I32(m)),
            constexprs=dict(X_STRIDE=strides["X_STRIDE"], K=k, BLOCK=SCALE_BLOCK)))
        a_ref, lda = scaled.ref, k
    weight = Ptr(ctx.scratch("wo_dequantized_weight", str(n * k * size)).ref, dtype)
    bn, bk, warps = WO_DEQUANT
    prologue.append(ctx.make_launch(
        wo_dequant_kernel, grid=(_cdiv(n, bn), _cdiv(k, bk)), num_warps=warps,
        args=dict(out_ptr=weight, w_ptr=args["w_ptr"], scales_ptr=args["scales_ptr"],
                  offsets_ptr=args["offsets_ptr"]),
        constexprs=dict(N=n, K=k, BITS=bits, GROUP=group, HAS_OFFSET=offsets, BLOCK_N=bn,
                        BLOCK_K=bk)))
    ctx.gemm(Gemm(a=a_ref, w=weight.ref, out=ctx.ref(out)[0],
                  bias=ctx.ref(opt["bias"])[0] if bias else None, m=m, n=n, k=k, lda=lda,
                  ldc=strides["OUT_STRIDE"], dtype=dtype, alternatives=alternatives,
                  prologue=prologue, epilogue=after))


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


def linear_wo(x, w, scales, bits: int, group_size: int, offsets=None, pre_quant_scale=None,
              bias=None, num_splits: int | None = None, out=None, path: str | None = None,
              gemv_config: tuple | None = None, mma_config: tuple | None = None,
              workspace: tuple | None = None, glu: bool = False):
    """out = x' @ wd.T (+ bias) as the plan computes it. `path`: "gemv" (M <= 16), "mma"
    (int4 in groups of a multiple of 64, M up to the configuration's; mma_config: a WO_MMA
    entry, else the 16-row one; num_splits: S, else as the plan picks it;
    workspace: its float32 partials and int32 counts, the counts 0, else new ones), "splitk"
    (M <= SMALL_M; num_splits: S, else as the plan picks it) or "dequant" (the weight
    dequantized, then torch's matmul in the place of cuBLASLt); None: gemv for M <= 4 where
    the weight allows it, splitk for M <= SMALL_M (or when num_splits is given), else dequant.
    `glu` (path "mma"): out[M, N / 2] = silu(y[:, :N/2]) * y[:, N/2:] of the product y, as
    silu_mul rounds it."""
    import torch
    m, k = x.shape
    n = w.shape[0]
    if glu and path != "mma":
        raise ValueError(f"the SiLU-mul runs inside the int4 tensor-core kernel only, not "
                         f"path {path!r}")
    out, y = glu_out(x, n, m, None, glu, None, out)
    dtype = str(x.dtype).split(".")[1]
    some = scales  # any tensor stands in for an absent operand: it is never read
    opt = (some if offsets is None else offsets,
           some if pre_quant_scale is None else pre_quant_scale, some if bias is None else bias)
    flags = (offsets is not None, pre_quant_scale is not None, bias is not None)
    if path is None:
        if num_splits is None and m <= 4 and gemv_fits(bits, group_size, k):
            path = "gemv"
        else:
            path = "splitk" if m <= SMALL_M else "dequant"
    if path == "gemv":
        if m > GEMV_MAX_M or not gemv_fits(bits, group_size, k):
            raise ValueError(f"the GEMV takes M <= {GEMV_MAX_M} and whole words per group, got "
                             f"M={m}, K={k}, group {group_size}, {bits} bits")
        rows = 1 if m == 1 else 2 if m == 2 else 4
        cfg = gemv_config or WO_GEMV
        direct(wo_gemv_kernel, x)[(_cdiv(m, rows), _cdiv(n, cfg[0]))](
            out, x, w, scales, *opt, m, k * bits // 32, X_STRIDE=x.stride(0),
            OUT_STRIDE=out.stride(0),
            **gemv_constexprs(n, k, rows, bits, group_size, *flags, cfg=cfg), num_warps=cfg[2],
            num_stages=cfg[3])
        return out
    if path == "mma":
        cfg = mma_config or WO_MMA[2]
        if m > cfg[5] or not mma_fits(bits, group_size, k, dtype):
            raise ValueError(f"the int4 tensor-core kernel takes M <= {cfg[5]}, int4 groups of "
                             f"a multiple of 64 and a 16-bit dtype, got M={m}, group "
                             f"{group_size}, {bits} bits, {dtype}")
        if num_splits is None:
            sms = (torch.cuda.get_device_properties(x.device).multi_processor_count
                   if x.is_cuda else 4)
            num_splits = mma_splits(n, k, group_size, cfg, sms, m)
        grid = (_cdiv(m, cfg[4]), _cdiv(n, cfg[0]), num_splits)
        partials, counts = workspace or (
            torch.empty(max(1, num_splits * m * n), dtype=torch.float32, device=x.device),
            torch.zeros(grid[0] * grid[1], dtype=torch.int32, device=x.device))
        direct(wo_mma_kernel, x)[grid](
            out if y is None else y, partials, counts, x, w, scales, *opt, out, m, num_splits,
            X_STRIDE=x.stride(0), OUT_STRIDE=out.stride(0),
            **mma_constexprs(n, k, group_size, *flags, cfg=cfg, asm=not interpreting(),
                             act_stride=out.stride(0) if glu else None),
            num_warps=cfg[2], num_stages=cfg[3])
        return out
    if path == "dequant":
        xs = x
        if pre_quant_scale is not None:
            xs = torch.empty((m, k), dtype=x.dtype, device=x.device)
            direct(scale_cols_kernel, x)[(m, _cdiv(k, SCALE_BLOCK))](
                xs, x, pre_quant_scale, m, X_STRIDE=x.stride(0), K=k, BLOCK=SCALE_BLOCK,
                num_warps=4)
        wd = dequantize(w, scales, bits, group_size, offsets, x.dtype)
        y = torch.nn.functional.linear(xs, wd, bias)
        out.copy_(y)
        return out
    if m > SMALL_M:
        raise ValueError(f"the split-K kernel takes M <= {SMALL_M}, got {m}")
    if num_splits is not None:
        splits = num_splits
    else:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        splits = splits_for(n, k, sms)
    partials = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32,
                           device=x.device)
    direct(wo_gemm_kernel, x)[(1, _cdiv(n, WO_SMALL[1]), splits)](
        out, partials, x, w, scales, *opt, m, splits, X_STRIDE=x.stride(0),
        OUT_STRIDE=out.stride(0),
        **wo_constexprs(WO_SMALL, n, k, bits, group_size, *flags, dtype),
        num_warps=WO_SMALL[3], num_stages=WO_SMALL[4])
    if splits > 1:
        direct(splitk_reduce_kernel, x)[(m, _cdiv(n, REDUCE_BLOCK))](
            out, partials, opt[2], m, splits, OUT_STRIDE=out.stride(0),
            N=n, HAS_BIAS=bias is not None, BLOCK=REDUCE_BLOCK, num_warps=4)
    return out


def dequantize(w, scales, bits: int, group_size: int, offsets=None, dtype=None, out=None):
    """The dequantized weight [N, K] in `dtype` (scales' when None), by wo_dequant_kernel."""
    import torch
    n = w.shape[0]
    k = w.shape[1] * (2 if bits == 4 else 1)
    if out is None:
        out = torch.empty((n, k), dtype=dtype or scales.dtype, device=w.device)
    bn, bk, warps = WO_DEQUANT
    direct(wo_dequant_kernel, w)[(_cdiv(n, bn), _cdiv(k, bk))](
        out, w, scales, scales if offsets is None else offsets, N=n, K=k, BITS=bits,
        GROUP=group_size, HAS_OFFSET=offsets is not None, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=warps)
    return out
