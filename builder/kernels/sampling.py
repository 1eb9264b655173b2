"""Token selection on the GPU from float32 logits [B, vocab].

greedy_kernel: argmax per row, the lowest index among equal maxima (torch.argmax's choice).
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
from kiln.builder.kernels.spec import Ptr

BLOCK = 2048
BISECT_STEPS = 40


@triton.jit
def greedy_kernel(out_ptr, logprob_ptr, logits_ptr, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
    """out[row]: the argmax (-1 when the row holds NaN or no finite value); logprob[row]: the
    log-softmax there, from an online log-sum-exp over the same pass."""
    row = tl.program_id(0).to(tl.int64)
    best = float("-inf")
    best_index = 0
    total = 0.0
    bad = 0
    for start in range(0, VOCAB, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * VOCAB + cols, mask=cols < VOCAB, other=float("-inf"))
        bad += tl.sum((x != x).to(tl.int32), axis=0)
        top = tl.max(x, axis=0)
        index = tl.min(tl.where(x == top, cols, VOCAB), axis=0)
        new_best = tl.maximum(best, top)
        shift = tl.where(new_best == float("-inf"), 0.0, new_best)
        total = total * tl.exp(best - shift) + tl.sum(tl.exp(x - shift), axis=0)
        if top > best:
            best_index = index
        best = new_best
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
                  seed_ptr, VOCAB: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
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

def greedy(logits):
    """(argmax per row, -1 for a row with NaN or no finite value; log-softmax there)."""
    import torch

    out = torch.empty(logits.shape[0], dtype=torch.int32, device=logits.device)
    logprob = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    direct(greedy_kernel, logits)[(logits.shape[0],)](out, logprob, logits, VOCAB=logits.shape[1],
                                                      BLOCK=BLOCK, num_warps=8)
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
    max_rows = ctx.build.max_batch_size
    tokens = ctx.scratch("select", str(8 * max_rows))
    logprobs = Ptr({"scratch": "select", "offset": 4 * max_rows}, "float32")
    ctx.launch(greedy_kernel, grid=(ctx.rows(logits),), num_warps=8,
               args=dict(out_ptr=Ptr(tokens.ref, "int32"), logprob_ptr=logprobs,
                         logits_ptr=ctx.ptr(logits)),
               constexprs=dict(VOCAB=vocab, BLOCK=BLOCK))
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
