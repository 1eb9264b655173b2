"""Paged attention for a mixed step: decodes and prefill chunks.

Reference: kiln.builder.ops.attention (each query token at position p attends to its
sequence's cached keys 0..p; GQA shares one kv head among GROUP query heads). A step's
sequences come decodes first (the scheduler's order), and the op treats its leading sequences
of one query token each (BD of the B, the step symbol) apart from the rest:
  1. paged_decode_kernel for the first BD sequences: it splits each sequence's context into S
     ranges (split-KV: long contexts at small batch still fill the GPU); with S > 1,
     paged_decode_reduce_kernel merges the partial softmax states. RoPE and the KV write are its
     prologue (rope_kv_kernel's functions, so the same arithmetic): every program rotates its
     kv head's GROUP query heads into the output buffer and reads them back from there, and the
     program of the split that holds the new token writes that token's k and v into the cache
     before its loop reads them. A program owns one token, so a decode reads each K/V tile once
     for its GROUP query heads and nothing else. Over an 8-bit cache it has three launches, for
     unsplit contexts, short split ones and long splits, and a step takes one
     (decode_launch);
  2. for the sequences after them (prompt chunks, and any one-token sequence among them):
     rope_kv_kernel (rope.py), RoPE on q and k, k and v into the paged cache; then
     paged_attention_kernel, a flash-attention loop over the cache. A program owns BLOCK_Q
     query tokens of one sequence times the GROUP query heads of one kv head (BLOCK_M rows), so
     GQA loads each K/V tile once for the whole group. Query blocks are numbered per sequence
     without a host-side table: sequence b (from BD on) starts at block
     (query_start[b] - BD) // BLOCK_Q + b - BD, so (T - BD) // BLOCK_Q + B - BD programs cover
     any step, and each finds its sequence by binary search over query_start.
A decode-only step (BD == B) launches only the first; a step without decodes first, only the
second. A decode in the flash kernel would fill GROUP of its BLOCK_M rows and search the whole
step for its sequence: 1,792 decodes beside 50 prompts of 128 tokens took 50.4 ms of attention
a step that way (Llama-3.1-8B shape, H200), and 13.7 + 5.4 ms split between the two kernels.
Softmax runs in base 2 (exp2) with the scale folded in; products accumulate in float32.

A quantized cache (KV_QUANT 1: float8_e4m3fn, 2: int8; rope.py writes it, V transposed in each
block: rope.v_transposed) is read a tile at a time and converted in registers to q's dtype
(float16 for an FP8 cache of a 16-bit build: q is converted once, see _fp8_cache_operand),
which holds every fp8 and int8 value exactly; the dequantization factors are then applied in
float32 where they cost nothing and add no rounding: k_scale folds into the softmax scale
(q.(s k) = s (q.k)) and v_scale multiplies the float32 accumulator once
(sum p (s v) = s sum p v), before it is normalized or stored as a partial.
With KV_QUANT 0 the scale pointers are not read.

An attention op with out_qdtype (an FP8 engine's o-projection input, ops.attention) has every
kernel that writes output rows write them as e4m3 with its static scale (OUT_FP8, _store_out:
the 16-bit value, then quant.fp8_rows_kernel's rounding), so no quantization launch follows.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.rope import (check_cache_layout, kv_quant, plan_rope_kv, rope_angles,
                                     rope_kv, rope_table, rotate_heads, write_kv_token)
from kiln.builder.kernels.rounding import to_e4m3
from kiln.builder.kernels.elementwise import tanh
from kiln.builder.kernels.spec import F32, I32, pow2
from kiln.builder.kernels.symbols import evaluate, leading_decodes

LOG2E = 1.4426950408889634
MAX_SPLITS = 32
SPLIT_TOKENS = 64  # fewest context tokens worth a split of their own


@triton.jit
def _find_sequence(query_start_ptr, first_seq, first_tok, num_seqs, qblock,
                   BLOCK_Q: tl.constexpr):
    """The sequence (first_seq..num_seqs-1) whose query blocks hold block `qblock`."""
    lo = first_seq
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if (tl.load(query_start_ptr + mid) - first_tok) // BLOCK_Q + mid - first_seq <= qblock:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _out_inv(out_scale_ptr, OUT_FP8: tl.constexpr):
    """1 / the output's FP8 scale (1 without OUT_FP8), loaded where a kernel starts so the
    load is not on its critical path at the end."""
    if OUT_FP8:
        return tl.math.div_rn(1.0, tl.load(out_scale_ptr))
    else:
        return 1.0


@triton.jit
def _store_out(out_ptr, out8_ptr, inv, tok, head, d, value, mask, OUT_STRIDE: tl.constexpr,
               OUT8_STRIDE: tl.constexpr, HEAD_DIM: tl.constexpr, OUT_FP8: tl.constexpr):
    """The attention output rows `tok` (heads `head`, dims d) in out's dtype, or with OUT_FP8
    quantized from that value to e4m3 with `inv` (_out_inv) into out8_ptr, as
    quant.fp8_rows_kernel quantizes it."""
    y = value.to(out_ptr.dtype.element_ty)
    if OUT_FP8:
        tl.store(out8_ptr + tok * OUT8_STRIDE + head * HEAD_DIM + d,
                 to_e4m3(y.to(tl.float32), inv, out8_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + tok * OUT_STRIDE + head * HEAD_DIM + d, y, mask=mask)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a.to(b.dtype), b)


@triton.jit
def _fp8_cache_operand(q, IEEE: tl.constexpr, KV_QUANT: tl.constexpr):
    """q in the dtype the cache's tiles convert to: with an FP8 cache, float16 for 16-bit
    builds, since e4m3 -> float16 is one conversion instruction for two values (e4m3 ->
    bfloat16 takes three, which made the loop conversion-bound at half the bandwidth). Every
    e4m3 value is a float16 value, and so is every bfloat16 q of magnitude 2^-14 to 65504."""
    if KV_QUANT == 1:
        if not IEEE:
            q = q.to(tl.float16)
    return q


@triton.jit
def _attend_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_ptr, kvh, q_pos, start, hi,
                 last_block, qk_scale, d, d_ok, NKV: tl.constexpr, HEAD_DIM: tl.constexpr,
                 TPB: tl.constexpr, TILE: tl.constexpr, CAUSAL: tl.constexpr,
                 IEEE: tl.constexpr, KV_QUANT: tl.constexpr, WINDOW: tl.constexpr,
                 SOFTCAP: tl.constexpr, MASKED: tl.constexpr):
    """One tile of _attend's loop: keys start..start+TILE-1. Without MASKED every key of the
    tile is below hi and visible to every row, so nothing is masked."""
    j = tl.multiple_of(start, TILE) + tl.arange(0, TILE)
    if MASKED:
        j_ok = j < hi
        block_ok = j // TPB < last_block if KV_QUANT != 0 else j_ok  # whole blocks for V^T
        block = tl.load(bt_ptr + j // TPB, mask=block_ok, other=0)
        k_ok = j_ok[None, :] & d_ok[:, None]
        v_ok = j_ok[:, None] & d_ok[None, :]
    else:
        block = tl.load(bt_ptr + j // TPB)
        k_ok = d_ok[:, None]
        v_ok = d_ok[None, :]
    head = block.to(tl.int64) * (NKV * TPB * HEAD_DIM) + kvh * (TPB * HEAD_DIM)
    kv = head + (j % TPB) * HEAD_DIM
    k = tl.load(k_cache_ptr + kv[None, :] + d[:, None], mask=k_ok, other=0.0)
    if KV_QUANT != 0:
        k = k.to(q.dtype)
    s = _dot(q, k, IEEE) * qk_scale
    if SOFTCAP > 0:  # s is in log2 units: the cap too
        s = (SOFTCAP * 1.4426950408889634) * tanh(s / (SOFTCAP * 1.4426950408889634))
    if MASKED:
        if CAUSAL:
            visible = (j[None, :] <= q_pos[:, None]) & j_ok[None, :]
        else:
            visible = j_ok[None, :] & (q_pos[:, None] >= 0)
        if WINDOW > 0:
            visible = visible & (j[None, :] > q_pos[:, None] - WINDOW)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    if MASKED:  # a row that has seen no key yet keeps -inf: exp2 of it must not be NaN
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:  # every score finite: so is the new max
        m_use = m_new
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if KV_QUANT != 0:  # V^T: masked by whole blocks only (see _attend)
        v_t = tl.load(v_cache_ptr + (head + j % TPB)[None, :] + d[:, None] * TPB,
                      mask=d_ok[:, None], other=0.0)
        v = tl.trans(v_t).to(q.dtype)
    else:
        v = tl.load(v_cache_ptr + kv[:, None] + d[None, :], mask=v_ok, other=0.0)
    acc = acc * alpha[:, None] + _dot(p, v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _attend(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_ptr, kvh, q_pos, lo, full_hi, hi,
            qk_scale, d, NKV: tl.constexpr, HEAD_DIM: tl.constexpr, TPB: tl.constexpr,
            TILE: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
            KV_QUANT: tl.constexpr, WINDOW: tl.constexpr = 0, SOFTCAP: tl.constexpr = 0.0):
    """Online softmax over cached keys lo..hi-1 (lo a multiple of TILE) of one sequence (block
    table at bt_ptr); with WINDOW, a query at position p sees the keys after p - WINDOW only;
    with SOFTCAP, each score s (times scale) becomes SOFTCAP * tanh(s / SOFTCAP) (Gemma 2).
    The tiles below full_hi (lo + a multiple of TILE, <= hi) are visible to every row whole and
    run without masks; the tiles from there to hi, masked. An 8-bit cache's V
    (rope.v_transposed: [head_dim, tokens] a block) is read keys-contiguous and masked by whole
    blocks only, so its tiles load 16 bytes a copy: the keys past hi in the last block (and any
    tile's blocks past it: block 0) are read too, and weigh 0 (p = 0). The executor zeroes the
    cache when it allocates it and every write stores a finite code (fp8 saturates), so 0 * v
    is 0 there."""
    d_ok = d < HEAD_DIM
    last_block = tl.cdiv(hi, TPB)
    for start in range(lo, full_hi, TILE):
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_ptr, kvh,
                                     q_pos, start, hi, last_block, qk_scale, d, d_ok, NKV,
                                     HEAD_DIM, TPB, TILE, CAUSAL, IEEE, KV_QUANT, WINDOW,
                                     SOFTCAP, False)
    for start in range(full_hi, hi, TILE):
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_ptr, kvh,
                                     q_pos, start, hi, last_block, qk_scale, d, d_ok, NKV,
                                     HEAD_DIM, TPB, TILE, CAUSAL, IEEE, KV_QUANT, WINDOW,
                                     SOFTCAP, True)
    return acc, m_i, l_i


@triton.jit
def paged_attention_kernel(out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr,
                           context_lens_ptr, query_start_ptr, num_seqs, first_seq, max_blocks,
                           scale, k_scale_ptr, v_scale_ptr, Q_STRIDE: tl.constexpr,
                           OUT_STRIDE: tl.constexpr, NKV: tl.constexpr, GROUP: tl.constexpr,
                           HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, TPB: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE: tl.constexpr,
                           IEEE: tl.constexpr, KV_QUANT: tl.constexpr, out8_ptr=None,
                           out_scale_ptr=None, OUT8_STRIDE: tl.constexpr = 0,
                           OUT_FP8: tl.constexpr = 0, WINDOW: tl.constexpr = 0,
                           SOFTCAP: tl.constexpr = 0.0, PDL: tl.constexpr = 0):
    enter(PDL)
    inv = _out_inv(out_scale_ptr, OUT_FP8)
    qblock = tl.program_id(0)
    kvh = tl.program_id(1)
    first_tok = tl.load(query_start_ptr + first_seq)
    seq = _find_sequence(query_start_ptr, first_seq, first_tok, num_seqs, qblock, BLOCK_Q)
    q_begin = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_begin
    first = (qblock - ((q_begin - first_tok) // BLOCK_Q + seq - first_seq)) * BLOCK_Q
    if first < q_len:
        prefix = tl.load(context_lens_ptr + seq) - q_len
        rows = tl.arange(0, BLOCK_M)
        t = first + rows // GROUP
        head = kvh * GROUP + rows % GROUP
        row_ok = (rows < BLOCK_Q * GROUP) & (t < q_len)
        d = tl.arange(0, DIM_PAD)
        mask = row_ok[:, None] & (d[None, :] < HEAD_DIM)
        tok = (q_begin + t).to(tl.int64)
        q = tl.load(q_ptr + tok[:, None] * Q_STRIDE + head[:, None] * HEAD_DIM + d[None, :],
                    mask=mask, other=0.0)
        q = _fp8_cache_operand(q, IEEE, KV_QUANT)
        acc = tl.zeros([BLOCK_M, DIM_PAD], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        bt_ptr = block_tables_ptr + seq.to(tl.int64) * max_blocks
        kv_end = prefix + tl.minimum(first + BLOCK_Q, q_len)
        qk_scale = scale * 1.4426950408889634
        if KV_QUANT != 0:
            qk_scale = qk_scale * tl.load(k_scale_ptr)
        lo = 0
        if WINDOW > 0:  # from the tile of the block's first query's first visible key
            lo = tl.maximum(prefix + first - WINDOW + 1, 0) // TILE * TILE
        # Keys up to the block's first query are visible to all its rows.
        full_hi = lo if WINDOW > 0 else (prefix + first + 1) // TILE * TILE
        acc, m_i, l_i = _attend(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_ptr, kvh,
                                prefix + t, lo, full_hi, kv_end, qk_scale, d, NKV, HEAD_DIM,
                                TPB, TILE, True, IEEE, KV_QUANT, WINDOW, SOFTCAP)
        if KV_QUANT != 0:
            acc = acc * tl.load(v_scale_ptr)
        out = acc / tl.where(row_ok, l_i, 1.0)[:, None]
        _store_out(out_ptr, out8_ptr, inv, tok[:, None], head[:, None], d[None, :], out, mask,
                   OUT_STRIDE, OUT8_STRIDE, HEAD_DIM, OUT_FP8)


@triton.jit
def _decode_prologue(q_in_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, positions_ptr,
                     slot_ptr, inv_freq_ptr, k_scale_ptr, v_scale_ptr, tok, kvh, writes_kv,
                     Q_IN_STRIDE: tl.constexpr, Q_STRIDE: tl.constexpr, K_STRIDE: tl.constexpr,
                     V_STRIDE: tl.constexpr, NKV: tl.constexpr, GROUP: tl.constexpr,
                     GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HALF_PAD: tl.constexpr,
                     TPB: tl.constexpr, ROPE: tl.constexpr, KV_QUANT: tl.constexpr):
    """rope_kv_kernel's work for one decode token and one kv head, with its arithmetic: RoPE on
    the GROUP query heads of kv head `kvh` (q_in -> q, where the attention reads them) and,
    where `writes_kv`, k rotated and v into the token's cache slot."""
    i, c, s = rope_angles(positions_ptr, inv_freq_ptr, tok, HEAD_DIM, HALF_PAD, ROPE)
    if ROPE:
        rotate_heads(q_in_ptr + tok * Q_IN_STRIDE + kvh * GROUP * HEAD_DIM,
                     q_ptr + tok * Q_STRIDE + kvh * GROUP * HEAD_DIM, i, c, s, 1.0, GROUP,
                     GROUP_PAD, HEAD_DIM, HEAD_DIM, ROPE, 0)
    if writes_kv:
        head = kvh * (TPB * HEAD_DIM)
        write_kv_token(k_ptr + tok * K_STRIDE + kvh * HEAD_DIM,
                       v_ptr + tok * V_STRIDE + kvh * HEAD_DIM, k_cache_ptr + head,
                       v_cache_ptr + head, tl.load(slot_ptr + tok), k_scale_ptr, v_scale_ptr, i,
                       c, s, 1, 1, NKV, HEAD_DIM, TPB, ROPE, KV_QUANT)


@triton.jit
def paged_decode_kernel(out_ptr, partial_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr,
                        context_lens_ptr, query_start_ptr, max_blocks, num_splits, scale,
                        k_scale_ptr, v_scale_ptr, q_in_ptr, k_ptr, v_ptr, positions_ptr,
                        slot_ptr, inv_freq_ptr, Q_STRIDE: tl.constexpr,
                        OUT_STRIDE: tl.constexpr, NQ: tl.constexpr, NKV: tl.constexpr,
                        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
                        TPB: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr,
                        IEEE: tl.constexpr, KV_QUANT: tl.constexpr, PROLOGUE: tl.constexpr = 0,
                        Q_IN_STRIDE: tl.constexpr = 0, K_STRIDE: tl.constexpr = 0,
                        V_STRIDE: tl.constexpr = 0, GROUP_PAD: tl.constexpr = 1,
                        HALF_PAD: tl.constexpr = 1, ROPE: tl.constexpr = 0, out8_ptr=None,
                        out_scale_ptr=None, OUT8_STRIDE: tl.constexpr = 0,
                        OUT_FP8: tl.constexpr = 0, WINDOW: tl.constexpr = 0,
                        SOFTCAP: tl.constexpr = 0.0, PDL: tl.constexpr = 0):
    enter(PDL)
    inv = _out_inv(out_scale_ptr, OUT_FP8)
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(context_lens_ptr + seq)
    base = 0
    if WINDOW > 0:  # the splits share the window's tiles only
        base = tl.maximum(ctx_len - WINDOW, 0) // TILE * TILE
    per = tl.cdiv(tl.cdiv(ctx_len - base, TILE), num_splits) * TILE
    lo = base + split * per
    hi = tl.minimum(ctx_len, lo + per)
    tok = tl.load(query_start_ptr + seq).to(tl.int64)
    if PROLOGUE:
        # The split that holds the new token writes its k and v; the others never read it.
        _decode_prologue(q_in_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr,
                         positions_ptr, slot_ptr, inv_freq_ptr, k_scale_ptr, v_scale_ptr, tok,
                         kvh, (lo < ctx_len) & (ctx_len <= hi), Q_IN_STRIDE, Q_STRIDE,
                         K_STRIDE, V_STRIDE, NKV, GROUP, GROUP_PAD, HEAD_DIM, HALF_PAD, TPB,
                         ROPE, KV_QUANT)
        tl.debug_barrier()  # the program's own writes, visible to all its threads
    rows = tl.arange(0, BLOCK_M)
    head = kvh * GROUP + rows
    row_ok = rows < GROUP
    d = tl.arange(0, DIM_PAD)
    mask = row_ok[:, None] & (d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + tok * Q_STRIDE + head[:, None] * HEAD_DIM + d[None, :], mask=mask,
                other=0.0)
    q = _fp8_cache_operand(q, IEEE, KV_QUANT)
    acc = tl.zeros([BLOCK_M, DIM_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * max_blocks
    q_pos = tl.zeros([BLOCK_M], dtype=tl.int32)
    if WINDOW > 0:
        q_pos += ctx_len - 1
    qk_scale = scale * 1.4426950408889634
    if KV_QUANT != 0:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    full_hi = lo if WINDOW > 0 else lo + tl.maximum(hi - lo, 0) // TILE * TILE
    acc, m_i, l_i = _attend(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_ptr, kvh, q_pos, lo,
                            full_hi, hi, qk_scale, d, NKV, HEAD_DIM, TPB, TILE, False, IEEE,
                            KV_QUANT, WINDOW, SOFTCAP)
    if KV_QUANT != 0:
        acc = acc * tl.load(v_scale_ptr)
    if num_splits == 1:
        out = acc / tl.where(row_ok, l_i, 1.0)[:, None]
        _store_out(out_ptr, out8_ptr, inv, tok, head[:, None], d[None, :], out, mask,
                   OUT_STRIDE, OUT8_STRIDE, HEAD_DIM, OUT_FP8)
    else:
        # partials [B, NQ, num_splits, HEAD_DIM + 2]: unnormalized acc, then max and sum.
        row = ((seq * NQ + head).to(tl.int64) * num_splits + split) * (HEAD_DIM + 2)
        tl.store(partial_ptr + row[:, None] + d[None, :], acc, mask=mask)
        tl.store(partial_ptr + row + HEAD_DIM, m_i, mask=row_ok)
        tl.store(partial_ptr + row + HEAD_DIM + 1, l_i, mask=row_ok)


@triton.jit
def paged_decode_reduce_kernel(out_ptr, partial_ptr, query_start_ptr, num_splits,
                               OUT_STRIDE: tl.constexpr, NQ: tl.constexpr,
                               HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
                               SPLITS_PAD: tl.constexpr, out8_ptr=None, out_scale_ptr=None,
                               OUT8_STRIDE: tl.constexpr = 0, OUT_FP8: tl.constexpr = 0,
                               PDL: tl.constexpr = 0):
    enter(PDL)
    inv = _out_inv(out_scale_ptr, OUT_FP8)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    sp = tl.arange(0, SPLITS_PAD)
    sp_ok = sp < num_splits
    d = tl.arange(0, DIM_PAD)
    d_ok = d < HEAD_DIM
    rows = ((seq * NQ + head).to(tl.int64) * num_splits + sp) * (HEAD_DIM + 2)
    m = tl.load(partial_ptr + rows + HEAD_DIM, mask=sp_ok, other=float("-inf"))
    l = tl.load(partial_ptr + rows + HEAD_DIM + 1, mask=sp_ok, other=0.0)
    top = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - top))
    acc = tl.load(partial_ptr + rows[:, None] + d[None, :], mask=sp_ok[:, None] & d_ok[None, :],
                  other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tok = tl.load(query_start_ptr + seq).to(tl.int64)
    _store_out(out_ptr, out8_ptr, inv, tok, head, d, out, d_ok, OUT_STRIDE, OUT8_STRIDE,
               HEAD_DIM, OUT_FP8)


# -- configuration shared by the lowering and the direct launches ------------------------------

def _tile(head_dim: int, fp32: bool) -> int:
    """Keys per loop step: K and V tiles, double-buffered, stay under sm_89's 99 KB."""
    if fp32 and head_dim > 128:
        return 16
    return 32 if head_dim > 128 or fp32 else 64


def prefill_config(nq: int, nkv: int, head_dim: int, fp32: bool = False) -> dict:
    group = nq // nkv
    block_m = max(64, pow2(group))
    return dict(GROUP=group, BLOCK_M=block_m, BLOCK_Q=max(1, block_m // group),
                DIM_PAD=max(16, pow2(head_dim)), TILE=_tile(head_dim, fp32))


def prefill_warps(head_dim: int) -> int:
    """The flash kernel's warps: a 64-row block on 8 warps ran at 134 TFLOP/s and on 4 at 237
    (H200, three causal 2,048-token prompts, head_dim 128: tests/gpu/attention_sweep.py)."""
    return 4 if head_dim <= 128 else 8


def decode_config(nq: int, nkv: int, head_dim: int, fp32: bool = False) -> dict:
    """The decode kernel's shape constexprs; TILE is a 16-bit cache's (decode_launch picks
    each launch's own)."""
    group = nq // nkv
    return dict(GROUP=group, BLOCK_M=max(16, pow2(group)), DIM_PAD=max(16, pow2(head_dim)),
                TILE=_tile(head_dim, fp32))


LONG_SPLIT_TOKENS = 1024  # context tokens a split holds from which an 8-bit cache's decode
# takes its long-split launch (decode_launch)


def decode_launch(cfg: dict, quant: int, fp32: bool, long: bool,
                  split: bool) -> tuple[int, int, int]:
    """(TILE, num_warps, num_stages) of a decode launch; cfg: decode_config's; `long`: the
    step's splits hold LONG_SPLIT_TOKENS or more; `split`: S > 1 (few sequences).

    A 16-bit cache: 64 keys a step on 4 warps, 2 stages, which reads the cache at 3.9-4.4 TB/s
    from 160 to 3,584 tokens a sequence (H200, Llama-3.1-8B heads; the copy bandwidth is 4.3).
    An 8-bit cache (V transposed, rope.v_transposed) moves half the bytes a key, so a program
    is over sooner. When the step has sequences enough to fill the GPU unsplit (S = 1),
    4-warp programs (six fit an SM by registers) leave the memory idle: those steps take 32
    keys a step on one warp per 16 x 128 float32 accumulator (12 programs an SM on an H100, by
    their 168 registers a thread), short contexts or long (for long ones decode_wide_launch
    may take its place). H200, FP8 cache, us a layer (tests/gpu/attention_sweep.py) at 64 keys x
    4 warps x 2 stages, 64 x 2 x 3 and 32 x 1 x 2: 2,048 sequences x 136 tokens 237 / 241 /
    177; x 160 235 / 238 / 181; x 224 296 / 300 / 245; x 384 434 / 446 / 404; 1,000 x 768
    426 / 436 / 395 (the 128/128 benchmark: 29,028 output tok/s from 27,459). Long contexts
    at 64 x 2 x 3 and 32 x 1 x 2: 500 x 2,048 579 / 528 and 250 x 3,584 503 / 527 on the H200;
    on the H100, in the engine (the FP8 2048/2048 run's mean decode step, 167 sequences at
    3,072 tokens), 380.5 / 353.5 us a layer, the step's kernels 16.60 / 15.74 ms (the kernel
    alone at 100 x 3,072: 278 / 225). A split context (batch 1: a layer's decode 6.6 us on one
    warp against 5.9 on four, speed check) keeps 4 x 2; long splits take 2 warps x 3 stages
    (in the engine on an H200, 2048/2048 at 250 sequences when those steps ran on it: 19.35 ms
    a decode step against 19.78 with 128 keys x 4 warps x 2 stages)."""
    if not quant or fp32:
        return cfg["TILE"], 4, 2
    if not split:
        return 32, max(1, cfg["BLOCK_M"] * cfg["DIM_PAD"] // 2048), 2
    return (cfg["TILE"], 2, 3) if long else (cfg["TILE"], 4, 2)


def decode_wide_launch(cfg: dict, quant: int, fp32: bool) -> tuple[int, int, int] | None:
    """The launch an 8-bit cache's unsplit steps of long contexts take in place of
    decode_launch's (one warp a program: the narrow) where it leaves fewer of the GPU's
    program slots idle: the same tile on twice the warps. None: no such launch (a 16-bit
    cache, float32).

    A step of BD sequences runs BD x NKV programs; the GPU runs R of a launch at once (its
    occupancy, the resident symbol) and takes the next as programs end. Unsplit programs of one
    wave's sequences are equally long, so they end together, and a last wave much smaller than
    R runs alone with the memory idle. The step takes the wide launch when its waves pad fewer
    programs: cdiv(P, R_wide) * R_wide < cdiv(P, R_narrow) * R_narrow. H100, FP8 cache,
    Llama-3.1-8B heads at 3,072 tokens (tests/gpu/attention_sweep.py --prologue), us a layer,
    narrow (168 registers: 12 an SM, 1,584 on 132 SMs) against wide (124: 8 an SM, 1,056):
    100 sequences 233.7 / 230.1; 134 299.8 / 395.1; 167 363.8 / 437.6; 200 544.2 / 471.0; 225
    602.1 / 501.2; 250 613.4 / 544.9; 275 635.9 / 685.9; 300 668.4 / 713.3; the rule picks
    the faster at each (equal padding, 275 and 300: the narrow). Splitting instead costs the
    reduction: 250 sequences at S = 2, 3, 4 576.8, 576.5, 581.1 on the narrow launch. Short
    contexts keep the narrow launch (many short waves: a small last one costs little)."""
    if not quant or fp32:
        return None
    tile, warps, stages = decode_launch(cfg, quant, fp32, True, False)
    return tile, 2 * warps, stages


def decode_launches(cfg: dict, quant: int, fp32: bool, splits: str,
                    long_symbol) -> list[tuple[tuple[int, int, int], str | None]]:
    """[(decode_launch's config, the condition a step takes it on)]: one launch per distinct
    config (None: every step) over S and the long-split symbol, which long_symbol() names
    (called only when a condition needs it)."""
    cells: dict[tuple, set[tuple[int, int]]] = {}
    for is_long in (0, 1):
        for is_split in (0, 1):
            config = decode_launch(cfg, quant, fp32, bool(is_long), bool(is_split))
            cells.setdefault(config, set()).add((is_long, is_split))
    if len(cells) == 1:
        return [(next(iter(cells)), None)]
    split_when = {0: f"{splits} == 1", 1: f"{splits} > 1"}

    def long_is(value: int) -> str:  # long_symbol() names one symbol however often it is asked
        return f"{long_symbol()} == {value}"

    def when(cases: set[tuple[int, int]]) -> str:
        longs, splits_ = {c[0] for c in cases}, {c[1] for c in cases}
        if cases != {(a, b) for a in longs for b in splits_}:  # three of the four cases
            return " or ".join(f"({long_is(a)} and {split_when[b]})" for a, b in sorted(cases))
        parts = [long_is(min(longs))] if len(longs) == 1 else []
        return " and ".join(parts + ([split_when[min(splits_)]] if len(splits_) == 1 else []))

    return [(config, when(cases)) for config, cases in cells.items()]


def _keys(window: int) -> str:
    """The most keys a query of the step attends to."""
    return f"min(MAXCTX, {window})" if window else "MAXCTX"


def long_split_formula(splits: str, window: int = 0) -> str:
    """1 when a split of the step's longest context holds LONG_SPLIT_TOKENS or more."""
    return f"cdiv({_keys(window)}, {splits}) >= {LONG_SPLIT_TOKENS}"


def splits_formula(nkv: int, tile: int, window: int = 0) -> str:
    """S: split the context when BD * NKV programs would leave the GPU under-filled; a split
    holds SPLIT_TOKENS or more, and at least one tile of `tile` keys (a split is whole tiles:
    more splits than tiles would be empty). With a sliding window, the window's keys."""
    return (f"max(1, min({MAX_SPLITS}, cdiv(2 * NSM, max(1, BD) * {nkv}), "
            f"cdiv({_keys(window)}, {max(SPLIT_TOKENS, tile)})))")


def partials_bytes_formula(nq: int, head_dim: int) -> str:
    """Scratch for the partial states: BD * S <= 2 * NSM + BD <= 2 * NSM + B (splits_formula)."""
    return f"(2 * NSM + B) * {nq} * {head_dim + 2} * 4"


# -- lowering -----------------------------------------------------------------------------------

def plan_attention(node, ctx):
    q, k, v, _pos, _slots, block_tables, context_lens, query_start = node.inputs[:8]
    out, *quantized = node.outputs  # with out_qdtype: the FP8 output too (ops.attention)
    a = node.attrs
    nq, nkv, hd, rope = a["num_heads"], a["num_kv_heads"], a["head_dim"], a.get("rope")
    k_cache, v_cache = ctx.kv(a["layer"], 0), ctx.kv(a["layer"], 1)
    want = a.get("kv_dtype") or ctx.build.dtype
    if k_cache.dtype != want:
        raise ValueError(f"attention layer {a['layer']} expects a {want} KV cache, but the "
                         f"build's cache holds {k_cache.dtype}")
    kv_scales = tuple(node.inputs[8:10]) if a.get("kv_dtype") else None
    q_src = out if rope else q  # RoPE leaves the rotated q in the output buffer
    ieee = ctx.dtype(out) == "float32"
    quant = kv_quant(k_cache.dtype)
    k_scale, v_scale = map(ctx.ptr, kv_scales) if quant else (k_cache, v_cache)
    common = dict(q_ptr=ctx.ptr(q_src), k_cache_ptr=k_cache, v_cache_ptr=v_cache,
                  block_tables_ptr=ctx.ptr(block_tables), context_lens_ptr=ctx.ptr(context_lens),
                  query_start_ptr=ctx.ptr(query_start), scale=F32(a["scale"]),
                  k_scale_ptr=k_scale, v_scale_ptr=v_scale)
    shape = dict(Q_STRIDE=ctx.row_stride(q_src), OUT_STRIDE=ctx.row_stride(out), NKV=nkv,
                 HEAD_DIM=hd, TPB=ctx.tokens_per_block, IEEE=ieee, KV_QUANT=quant)
    # The output's FP8 quantization: every kernel that writes output rows writes them as e4m3.
    out8 = dict(out8_ptr=ctx.ptr(quantized[0]), out_scale_ptr=ctx.ptr(node.inputs[-1])) \
        if quantized else dict(out8_ptr=ctx.ptr(out), out_scale_ptr=ctx.ptr(out))  # unread
    out8_shape = dict(OUT8_STRIDE=ctx.row_stride(quantized[0]) if quantized else 0,
                      OUT_FP8=bool(quantized))
    # The leading BD sequences (decodes): RoPE, the KV write and attention in the decode kernel.
    window = shape["WINDOW"] = a.get("window", 0)  # set where it hides keys (models/llama.py)
    shape["SOFTCAP"] = float(a.get("softcap", 0.0))
    dcfg = decode_config(nq, nkv, hd, ieee)
    splits = ctx.derive(splits_formula(nkv, dcfg["TILE"], window))
    partials = ctx.scratch("attention_partials", partials_bytes_formula(nq, hd))
    prologue = dict(q_in_ptr=ctx.ptr(q), k_ptr=ctx.ptr(k), v_ptr=ctx.ptr(v),
                    positions_ptr=ctx.ptr("positions"), slot_ptr=ctx.ptr("slot_mapping"),
                    inv_freq_ptr=rope_table(ctx, rope))
    # One launch, or with an 8-bit cache one per config (a step takes one of them).
    launches = decode_launches(dcfg, quant, ieee, splits,
                               lambda: ctx.derive(long_split_formula(splits, window)))

    def decode(tile: int, warps: int, stages: int):
        return ctx.make_launch(
            paged_decode_kernel, grid=("BD", nkv, splits), num_warps=warps, num_stages=stages,
            args=dict(common, **prologue, **out8, out_ptr=ctx.ptr(out), partial_ptr=partials,
                      max_blocks=I32("MAXBLK"), num_splits=I32(splits)),
            constexprs=dict(shape, **out8_shape, NQ=nq, **dict(dcfg, TILE=tile),
                            **prologue_constexprs(ctx.row_stride(q), ctx.row_stride(k),
                                                  ctx.row_stride(v), nq, nkv, hd, rope)))

    made = [[decode(*config), config, when] for config, when in launches]
    wide = decode_wide_launch(dcfg, quant, ieee)
    if wide is not None:  # long unsplit steps: the narrow launch or the wide, by their waves
        narrow = next(m for m in made if m[1] == decode_launch(dcfg, quant, ieee, True, False))
        wide_launch = decode(*wide)
        rn, rw = ctx.resident_programs(narrow[0]), ctx.resident_programs(wide_launch)
        takes_wide = (f"{ctx.derive(long_split_formula(splits, window))} == 1 and "
                      f"{splits} == 1 and cdiv(BD * {nkv}, {rw}) * {rw} < "
                      f"cdiv(BD * {nkv}, {rn}) * {rn}")
        narrow[2] = f"not ({takes_wide})" if narrow[2] is None else \
            f"({narrow[2]}) and not ({takes_wide})"
        made.append([wide_launch, wide, takes_wide])
    for launch, _, when in made:
        ctx.add(launch, when)
    ctx.launch(paged_decode_reduce_kernel, grid=("BD", nq), when=f"{splits} > 1",
               num_warps=4,
               args=dict(out8, out_ptr=ctx.ptr(out), partial_ptr=partials,
                         query_start_ptr=ctx.ptr(query_start), num_splits=I32(splits)),
               constexprs=dict(out8_shape, OUT_STRIDE=ctx.row_stride(out), NQ=nq, HEAD_DIM=hd,
                               DIM_PAD=max(16, pow2(hd)), SPLITS_PAD=MAX_SPLITS))
    # The sequences after them (prompt chunks): rope_kv_kernel, then the flash kernel.
    plan_rope_kv(ctx, q=q, q_out=out, k=k, v=v, layer=a["layer"], nq=nq, nkv=nkv, head_dim=hd,
                 rope=rope, kv_scales=kv_scales, first_token="BD")
    cfg = prefill_config(nq, nkv, hd, ieee)
    ctx.launch(paged_attention_kernel, grid=(f"(T - BD) // {cfg['BLOCK_Q']} + B - BD", nkv),
               num_warps=prefill_warps(hd), num_stages=2,
               args=dict(common, **out8, out_ptr=ctx.ptr(out), num_seqs=I32("B"),
                         first_seq=I32("BD"), max_blocks=I32("MAXBLK")),
               constexprs=dict(shape, **out8_shape, **cfg))


def prologue_constexprs(q_stride: int, k_stride: int, v_stride: int, nq: int, nkv: int,
                        head_dim: int, rope) -> dict:
    """paged_decode_kernel's constexprs for RoPE and the KV write in the kernel."""
    return dict(PROLOGUE=True, Q_IN_STRIDE=q_stride, K_STRIDE=k_stride, V_STRIDE=v_stride,
                GROUP_PAD=pow2(nq // nkv), HALF_PAD=pow2(head_dim // 2), ROPE=bool(rope))


# -- direct launches ----------------------------------------------------------------------------

def paged_attention(q, k_cache, v_cache, block_tables, context_lens, query_start, num_heads: int,
                    head_dim: int, scale: float, num_splits: int | None = None, out=None,
                    k_scale=None, v_scale=None, new_kv: dict | None = None,
                    out_fp8=None, out_scale=None, window: int = 0, softcap: float = 0.0):
    """Attention of q [T, nq*hd] over the paged cache (k_cache/v_cache: [num_blocks, nkv,
    tokens_per_block, hd], an 8-bit v_cache as rope.v_transposed stores it), launched as the
    plan launches it: the leading one-token sequences through the decode kernel (num_splits
    ranges each), the rest through the flash kernel.
    A float8_e4m3fn or int8 cache is dequantized with k_scale / v_scale (float32 [1]).
    new_kv (k, v, positions, slot_mapping, inv_freq, rope) makes it the whole attention op, as
    the plan runs it: q and k rotated when rope, k and v written into the cache, inside the
    decode kernel for the leading decodes and by rope_kv_kernel first for the other tokens.
    Without it, q is already rotated and the cache already holds the step's k and v.
    out_fp8 (float8_e4m3fn [T, nq*hd]) with out_scale (float32 [1]): the output is written
    there, quantized, as the plan writes an attention op's with out_qdtype (out then holds
    only the rotated q). window, softcap: the attention op's attrs (0: none)."""
    import torch

    t, b = q.shape[0], context_lens.shape[0]
    bd = leading_decodes(query_start.tolist())
    nkv, tpb = k_cache.shape[1], k_cache.shape[2]
    quant = kv_quant(k_cache.dtype)
    check_cache_layout(k_cache, v_cache, head_dim)
    out = q.new_empty((t, num_heads * head_dim)) if out is None else out
    q_src = out if new_kv is not None and new_kv["rope"] else q  # RoPE rotates q into out
    fp32 = q.dtype == torch.float32
    scales = (k_scale, v_scale) if quant else (k_cache, v_cache)
    shape = dict(Q_STRIDE=q_src.stride(0), OUT_STRIDE=out.stride(0), NKV=nkv, HEAD_DIM=head_dim,
                 TPB=tpb, IEEE=fp32, KV_QUANT=quant, WINDOW=window, SOFTCAP=float(softcap))
    fp8 = dict(out8_ptr=out_fp8, out_scale_ptr=out_scale,
               OUT8_STRIDE=out_fp8.stride(0), OUT_FP8=True) if out_fp8 is not None else {}
    if bd > 0:
        dshape = dict(shape)
        if new_kv is not None:
            n = new_kv
            prologue = (q, n["k"], n["v"], n["positions"], n["slot_mapping"], n["inv_freq"])
            dshape.update(prologue_constexprs(q.stride(0), n["k"].stride(0), n["v"].stride(0),
                                              num_heads, nkv, head_dim, n["rope"]))
        else:
            prologue = (q,) * 6  # never read
        splits = num_splits or 1
        partials = torch.empty(bd * num_heads * splits * (head_dim + 2), dtype=torch.float32,
                               device=q.device)
        dcfg = decode_config(num_heads, nkv, head_dim, fp32)
        long = evaluate(long_split_formula("S", window),
                        {"MAXCTX": int(context_lens.max()), "S": splits})
        tile, warps, stages = decode_launch(dcfg, quant, fp32, bool(long), splits > 1)
        direct(paged_decode_kernel, q)[(bd, nkv, splits)](
            out, partials, q_src, k_cache, v_cache, block_tables, context_lens, query_start,
            block_tables.stride(0), splits, scale, *scales, *prologue, **dshape, **fp8,
            NQ=num_heads, **dict(dcfg, TILE=tile), num_warps=warps, num_stages=stages)
        if splits > 1:
            direct(paged_decode_reduce_kernel, q)[(bd, num_heads)](
                out, partials, query_start, splits, OUT_STRIDE=out.stride(0), NQ=num_heads,
                HEAD_DIM=head_dim, DIM_PAD=max(16, pow2(head_dim)), SPLITS_PAD=MAX_SPLITS,
                **fp8, num_warps=4)
    if bd < b:
        if new_kv is not None:  # without RoPE the q it returns is a copy: q stays where it is
            n = new_kv
            rope_kv(q, n["k"], n["v"], n["positions"], n["slot_mapping"], k_cache, v_cache,
                    n["inv_freq"], head_dim, rope=n["rope"], k_scale=k_scale, v_scale=v_scale,
                    first_token=bd, q_out=out if n["rope"] else None)
        cfg = prefill_config(num_heads, nkv, head_dim, fp32)
        direct(paged_attention_kernel, q)[((t - bd) // cfg["BLOCK_Q"] + b - bd, nkv)](
            out, q_src, k_cache, v_cache, block_tables, context_lens, query_start, b, bd,
            block_tables.stride(0), scale, *scales, **shape, **cfg, **fp8,
            num_warps=prefill_warps(head_dim), num_stages=2)
    return out
