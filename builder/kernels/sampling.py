"""Token selection on the GPU from float32 logits [B, vocab].

greedy_kernel: argmax per row, the lowest index among equal maxima (torch.argmax's choice). Its
logits may be 16-bit too (a 16-bit LM head's output, before the cast to float32): each value is
read as float32, so the picks and log-probs are those of the cast.
For few rows one program a row would leave most SMs idle over a 128k vocabulary, so the row is
split into S chunks instead: greedy_partial_kernel reduces each chunk (max, its lowest index,
the sum of exp(x - max), NaN count) and greedy_combine_kernel merges a row's S partials.
sample_kernel: temperature, then top-k, top-p and min-p filters, then one draw per row from a
counter-based generator (Philox, seeded per row), as the Gumbel-max of the kept logits: equal
in distribution to softmax sampling over them. The top-k and top-p cut-offs are found by
bisection on the logit value (each step one pass over the row), so no sort is needed.
Reference: kiln.builder.kernels.sampling.reference_filter (torch) for the kept set.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.spec import I32, Ptr

BLOCK = 2048
BISECT_STEPS = 40
MAX_CHUNKS = 64
PARTIAL = 4  # floats per (row, chunk): max, its index, sum of exp(x - max), NaN count


@triton.jit
def _fold(x, cols, best, best_index, total, bad, VOCAB: tl.constexpr):
    """A block of logits x at `cols` folded into a row's running (max, its lowest index, sum of
    exp(x - max), NaN count): an online log-sum-exp beside the argmax."""
    bad += tl.sum((x != x).to(tl.int32), axis=0)
    top = tl.max(x, axis=0)
    index = tl.min(tl.where(x == top, cols, VOCAB), axis=0)
    new_best = tl.maximum(best, top)
    shift = tl.where(new_best == float("-inf"), 0.0, new_best)
    total = total * tl.exp(best - shift) + tl.sum(tl.exp(x - shift), axis=0)
    best_index = tl.where(top > best, index, best_index)
    return new_best, best_index, total, bad


@triton.jit
def greedy_kernel(out_ptr, logprob_ptr, logits_ptr, VOCAB: tl.constexpr, BLOCK: tl.constexpr,
                  PDL: tl.constexpr = 0):
    """out[row]: the argmax (-1 when the row holds NaN or no finite value); logprob[row]: the
    log-softmax there, from an online log-sum-exp over the same pass."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    best = float("-inf")
    best_index = 0
    total = 0.0
    bad = 0
    for start in range(0, VOCAB, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * VOCAB + cols, mask=cols < VOCAB,
                    other=float("-inf")).to(tl.float32)
        best, best_index, total, bad = _fold(x, cols, best, best_index, total, bad, VOCAB)
    if (bad > 0) | (best == float("-inf")) | (best == float("inf")):
        best_index = -1
    tl.store(out_ptr + row, best_index)
    tl.store(logprob_ptr + row, -tl.log(total))


@triton.jit
def greedy_partial_kernel(part_ptr, logits_ptr, chunk, VOCAB: tl.constexpr, BLOCK: tl.constexpr,
                          PDL: tl.constexpr = 0):
    """Chunk program_id(1) (`chunk` logits from program_id(1) * chunk) of row program_id(0):
    part[row, c] = (max, its lowest index, sum of exp(x - max), NaN count)."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    chunks = tl.num_programs(1)
    best = float("-inf")
    best_index = 0
    total = 0.0
    bad = 0
    for start in range(c * chunk, tl.minimum(c * chunk + chunk, VOCAB), BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * VOCAB + cols, mask=(cols < VOCAB) & (cols < c * chunk + chunk),
                    other=float("-inf")).to(tl.float32)
        best, best_index, total, bad = _fold(x, cols, best, best_index, total, bad, VOCAB)
    at = (row * chunks + c) * 4
    tl.store(part_ptr + at, best)
    tl.store(part_ptr + at + 1, best_index.to(tl.float32))
    tl.store(part_ptr + at + 2, total)
    tl.store(part_ptr + at + 3, bad.to(tl.float32))


@triton.jit
def greedy_combine_kernel(out_ptr, logprob_ptr, part_ptr, chunks, MAX_CHUNKS: tl.constexpr,
                          PDL: tl.constexpr = 0):
    """greedy_kernel's results for row program_id(0) from its `chunks` partials."""
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, MAX_CHUNKS)
    ok = c < chunks
    at = (row * chunks + c) * 4
    tops = tl.load(part_ptr + at, mask=ok, other=float("-inf"))
    indices = tl.load(part_ptr + at + 1, mask=ok, other=0.0)
    totals = tl.load(part_ptr + at + 2, mask=ok, other=0.0)
    bad = tl.sum(tl.load(part_ptr + at + 3, mask=ok, other=0.0), axis=0)
    best = tl.max(tops, axis=0)
    best_index = tl.min(tl.where(tops == best, indices, 1073741824.0), axis=0).to(tl.int32)
    shift = tl.where(best == float("-inf"), 0.0, best)
    total = tl.sum(tl.where(tops == float("-inf"), 0.0, totals * tl.exp(tops - shift)), axis=0)
    if (bad > 0) | (best == float("-inf")) | (best == float("inf")):
        best_index = -1
    tl.store(out_ptr + row, best_index)
    tl.store(logprob_ptr + row, -tl.log(total))


@triton.jit
def _count_above(logits_ptr, row, thr, inv_t, top, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
    """(number of logits/t >= thr, their softmax mass relative to the max)"""
    count = 0
    mass = 0.0
    for start in range(0, VOCAB, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * VOCAB + cols, mask=cols < VOCAB, other=float("-inf")) * inv_t
        keep = x >= thr
        count += tl.sum(keep.to(tl.int32), axis=0)
        mass += tl.sum(tl.where(keep, tl.exp(x - top), 0.0), axis=0)
    return count, mass


@triton.jit
def sample_kernel(out_ptr, logits_ptr, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
                  seed_ptr, VOCAB: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr,
                  PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    inv_t = 1.0 / tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    # Pass 1: the largest and smallest scaled logits and the total softmax mass.
    top = float("-inf")
    low = float("inf")
    for start in range(0, VOCAB, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < VOCAB
        x = tl.load(logits_ptr + row * VOCAB + cols, mask=ok, other=float("-inf")) * inv_t
        top = tl.maximum(top, tl.max(x, axis=0))
        low = tl.minimum(low, tl.min(tl.where(ok, x, float("inf")), axis=0))
    _, total = _count_above(logits_ptr, row, low, inv_t, top, VOCAB, BLOCK)
    # The kept set is {x >= thr}; each filter only raises thr.
    thr = low
    if min_p > 0.0:
        thr = tl.maximum(thr, top + tl.log(min_p))
    if (top_k > 0) & (top_k < VOCAB):
        lo = low  # count(x >= lo) >= k
        hi = top  # count(x >= hi) may be < k
        for _ in range(STEPS):
            mid = (lo + hi) * 0.5
            count, _m = _count_above(logits_ptr, row, mid, inv_t, top, VOCAB, BLOCK)
            if count >= top_k:
                lo = mid
            else:
                hi = mid
        thr = tl.maximum(thr, lo)
    if top_p < 1.0:
        lo = low  # mass(x >= lo) >= p * total
        hi = top
        for _ in range(STEPS):
            mid = (lo + hi) * 0.5
            _c, mass = _count_above(logits_ptr, row, mid, inv_t, top, VOCAB, BLOCK)
            if mass >= top_p * total:
                lo = mid
            else:
                hi = mid
        thr = tl.maximum(thr, lo)
    # Gumbel-max over the kept logits.
    seed = tl.load(seed_ptr + row)
    best = float("-inf")
    best_index = 0
    for start in range(0, VOCAB, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * VOCAB + cols, mask=cols < VOCAB, other=float("-inf")) * inv_t
        u = tl.rand(seed, cols)
        g = x - tl.log(-tl.log(tl.maximum(u, 1e-20)))
        g = tl.where(x >= thr, g, float("-inf"))
        top_g = tl.max(g, axis=0)
        index = tl.min(tl.where(g == top_g, cols, VOCAB), axis=0)
        if top_g > best:
            best = top_g
            best_index = index
    tl.store(out_ptr + row, best_index)


# -- direct launches ----------------------------------------------------------------------------

def chunk_size(vocab: int, chunks):
    """Logits per chunk of a row split `chunks` ways (a formula when `chunks` is a symbol)."""
    if isinstance(chunks, str):
        return f"cdiv(cdiv({vocab}, {chunks}), {BLOCK}) * {BLOCK}"
    return -(-(-(-vocab // chunks)) // BLOCK) * BLOCK


def chunks_formula(rows: str) -> str:
    """S: about two programs per SM over all rows, one (no split) from 2 x NSM rows up."""
    return f"max(1, min({MAX_CHUNKS}, cdiv(2 * NSM, {rows})))"


def greedy(logits, chunks: int = 1):
    """(argmax per row, -1 for a row with NaN or no finite value; log-softmax there); with
    chunks > 1 through the split kernels."""
    import torch

    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int32, device=logits.device)
    logprob = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if chunks == 1:
        direct(greedy_kernel, logits)[(rows,)](out, logprob, logits, VOCAB=vocab, BLOCK=BLOCK,
                                               num_warps=8)
        return out, logprob
    part = torch.full((rows * chunks * PARTIAL,), float("nan"), device=logits.device)
    direct(greedy_partial_kernel, logits)[(rows, chunks)](
        part, logits, chunk_size(vocab, chunks), VOCAB=vocab, BLOCK=BLOCK, num_warps=8)
    direct(greedy_combine_kernel, logits)[(rows,)](out, logprob, part, chunks,
                                                   MAX_CHUNKS=MAX_CHUNKS, num_warps=1)
    return out, logprob


def sample(logits, temperature, top_k, top_p, min_p, seed):
    """One token per row; every parameter is a per-row tensor (top_k <= 0: no top-k)."""
    import torch

    out = torch.empty(logits.shape[0], dtype=torch.int32, device=logits.device)
    direct(sample_kernel, logits)[(logits.shape[0],)](
        out, logits, temperature, top_k, top_p, min_p, seed, VOCAB=logits.shape[1],
        BLOCK=BLOCK, STEPS=BISECT_STEPS, num_warps=8)
    return out


# -- lowering -----------------------------------------------------------------------------------

def plan_select(ctx, logits: str) -> dict:
    """The greedy pick of every logits row, on the GPU, so a greedy step copies B tokens back
    instead of B x vocab logits. Returns the engine header's "select" entry: tokens (int32) then
    log-probs (float32), `capacity` of each, in one scratch buffer, one copy."""
    vocab = ctx.width(logits)
    rows = ctx.rows(logits)
    max_rows = ctx.build.max_batch_size
    tokens = Ptr(ctx.scratch("select", str(8 * max_rows)).ref, "int32")
    logprobs = Ptr({"scratch": "select", "offset": 4 * max_rows}, "float32")
    chunks = ctx.derive(chunks_formula(rows))
    ctx.launch(greedy_kernel, grid=(rows,), num_warps=8, when=f"{chunks} == 1",
               args=dict(out_ptr=tokens, logprob_ptr=logprobs, logits_ptr=ctx.ptr(logits)),
               constexprs=dict(VOCAB=vocab, BLOCK=BLOCK))
    # Split rows: rows x chunks <= 2 x NSM + rows partials.
    part = ctx.scratch("select_partials", f"{4 * PARTIAL} * (2 * NSM + {max_rows})")
    ctx.launch(greedy_partial_kernel, grid=(rows, chunks), num_warps=8, when=f"{chunks} > 1",
               args=dict(part_ptr=part, logits_ptr=ctx.ptr(logits),
                         chunk=I32(chunk_size(vocab, chunks))),
               constexprs=dict(VOCAB=vocab, BLOCK=BLOCK))
    ctx.launch(greedy_combine_kernel, grid=(rows,), num_warps=1, when=f"{chunks} > 1",
               args=dict(out_ptr=tokens, logprob_ptr=logprobs, part_ptr=part,
                         chunks=I32(chunks)),
               constexprs=dict(MAX_CHUNKS=MAX_CHUNKS))
    return {"ref": {"scratch": "select"}, "capacity": max_rows}


def reference_filter(logits, temperature: float, top_k: int, top_p: float, min_p: float):
    """The tokens sample() may return for one row, as a bool mask (torch, float32)."""
    import torch

    x = logits.float() / temperature
    keep = torch.ones_like(x, dtype=torch.bool)
    if min_p > 0:
        keep &= x >= x.max() + torch.log(torch.tensor(min_p))
    if 0 < top_k < x.numel():
        keep &= x >= torch.topk(x, top_k).values[-1]
    if top_p < 1:
        probs = torch.softmax(x, -1)
        order = torch.argsort(x, descending=True)
        before = torch.cumsum(probs[order], 0) - probs[order]
        kept = torch.zeros_like(keep)
        kept[order[before < top_p]] = True
        keep &= kept
    return keep
