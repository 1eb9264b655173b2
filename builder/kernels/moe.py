"""Mixture of experts (ops.moe): routing, the tokens grouped by expert, two grouped GEMMs, the
activation between them and the weighted sum of each token's experts.

Reference: kiln.builder.ops.moe. A step's T tokens make T * TOPK slots (token t's j-th expert
is slot t * TOPK + j). The launches, in order:
  1. `moe_route_kernel`, a program a token: softmax (or sigmoid, or sparsemixer) over the
     router's logits in float32, the TOPK largest (ties to the lower id; scores plus the correction bias where
     the op has one), renormalized, scaled and rounded as the op says: the expert ids
     and weights of each slot (scratch moe_ids, moe_weights).
  2. `moe_count_kernel`, a program an expert: how many slots chose it (moe_counts).
  3. `moe_place_kernel`, a program an expert: its slots, in ascending order, at its offset in
     moe_sorted, padded with the invalid slot T * TOPK to a multiple of BLOCK_M; each block of
     BLOCK_M entries is one expert's (moe_blocks), and moe_counts[E] gets the block count.
  4. `moe_gemm_kernel` over blocks x column tiles: each block's rows times its expert's
     gate_up weight (rows gathered from x by slot // TOPK), written by slot (moe_inter);
     blocks past the count do nothing. The grid is the most blocks T tokens can make:
     cdiv(T * TOPK + E * (BLOCK_M - 1), BLOCK_M), and no more than the slots (a block holds
     at least one).
  5. SiLU-mul (or GELU-tanh-mul) over the T * TOPK rows (moe_act), the dense MLP's kernel.
  6. `moe_gemm_kernel` again with the down weights, each row times its slot's routing weight
     (moe_y).
  7. `moe_sum_kernel`, a program a token and column block: the token's TOPK rows added in
     ascending expert order, rounded to the dtype after each add (HF's index_add_), then the
     shared expert's output times sigmoid of its gate where the model has one.
A step of up to SMALL_T tokens groups slots in blocks of 16 rows, a larger one in blocks of 64
(steps 3, 4 and 6 come in both forms, each run only in its steps).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.builder.ir import dtype_size
from kiln.builder.kernels import elementwise
from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.gemm import mma
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.spec import F32, I32, Ptr, pow2
from kiln.builder.ops import moe as moe_op

SMALL_T = 32
SOFTMAX, SIGMOID, SPARSEMIXER = (tl.constexpr(i) for i in range(3))  # moe_route_kernel's SCORING
SCORING = {"softmax": 0, "sigmoid": 1, "sparsemixer": 2}
# (BLOCK_M, when): the slot grouping of steps of few tokens and of the others.
PATHS = ((16, f"T <= {SMALL_T}"), (64, f"T > {SMALL_T}"))
BLOCK_N, BLOCK_K, GEMM_WARPS, GEMM_STAGES = 64, 64, 4, 3
SCAN = 1024  # slots a count or place program reads at a time
SUM_BLOCK = 1024
# the activation between the GEMMs: the dense MLP's act-mul kernels
ACT_KERNELS = {"silu": elementwise.silu_mul_kernel, "gelu_tanh": elementwise.gelu_tanh_mul_kernel}


@triton.jit
def moe_route_kernel(ids_ptr, weights_ptr, logits_ptr, bias_ptr, scale, eps,
                     LOGITS_STRIDE: tl.constexpr, E: tl.constexpr, BLOCK_E: tl.constexpr,
                     TOPK: tl.constexpr, KP2: tl.constexpr, RENORMALIZE: tl.constexpr,
                     ROUND: tl.constexpr, SCORING: tl.constexpr, HAS_BIAS: tl.constexpr,
                     PDL: tl.constexpr = 0):
    """Token program_id(0)'s experts: ids_ptr[t * TOPK + j] (int32), weights_ptr (float32),
    in the order picked. SCORING SOFTMAX or SIGMOID: the scores' TOPK largest (plus the bias:
    HAS_BIAS), each weighted by its score (renormalized), times `scale`; SPARSEMIXER: each
    pick the largest logit m left, weighted by its softmax among those left within `eps` of
    it (ops.moe.sparsemixer). ROUND: the weights rounded to the logits' dtype."""
    enter(PDL)
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    ok = e < E
    x = tl.load(logits_ptr + t * LOGITS_STRIDE + e, mask=ok, other=float("-inf")).to(tl.float32)
    if SCORING == SIGMOID:
        p = 1.0 / (1.0 + tl.exp(-x))
    elif SCORING == SOFTMAX:
        p = tl.exp(x - tl.max(x, axis=0))
        p = p / tl.sum(tl.where(ok, p, 0.0), axis=0)
    else:
        p = x
    choice = p
    if HAS_BIAS:
        choice = p + tl.load(bias_ptr + e, mask=ok, other=0.0)
    left = tl.where(ok, choice, float("-inf"))
    j = tl.arange(0, KP2)
    top_w = tl.zeros([KP2], dtype=tl.float32)
    top_id = tl.zeros([KP2], dtype=tl.int32)
    total = 0.0
    for r in tl.static_range(TOPK):
        best = tl.max(left, axis=0)
        pick = tl.min(tl.where(left == best, e, BLOCK_E), axis=0)
        if SCORING == SPARSEMIXER:
            # Divisions rounded as torch's (the GPU's `/` is approximate): a ratio exactly at
            # the threshold stays near, as in the reference. NaN (0 / 0): near.
            far = tl.math.div_rn(best - x, tl.maximum(tl.abs(x), best)) > 2 * eps
            near = (far == 0) & (left > float("-inf"))
            score = tl.math.div_rn(1.0, tl.sum(tl.where(near, tl.exp(x - best), 0.0), axis=0))
        else:
            score = tl.sum(tl.where(e == pick, p, 0.0), axis=0)
        top_w = tl.where(j == r, score, top_w)
        top_id = tl.where(j == r, pick, top_id)
        total += score
        left = tl.where(e == pick, float("-inf"), left)
    if RENORMALIZE:
        if SCORING == SIGMOID:
            total += 1e-20
        top_w = top_w / total
    top_w = top_w * scale
    if ROUND:
        top_w = top_w.to(logits_ptr.dtype.element_ty).to(tl.float32)
    tl.store(ids_ptr + t * TOPK + j, top_id, mask=j < TOPK)
    tl.store(weights_ptr + t * TOPK + j, top_w, mask=j < TOPK)


@triton.jit
def moe_count_kernel(counts_ptr, ids_ptr, slots, SCAN: tl.constexpr, PDL: tl.constexpr = 0):
    """counts_ptr[e] = how many of the `slots` ids are expert e = program_id(0)."""
    enter(PDL)
    e = tl.program_id(0)
    count = 0
    for start in range(0, slots, SCAN):
        i = start + tl.arange(0, SCAN)
        ids = tl.load(ids_ptr + i, mask=i < slots, other=-1)
        count += tl.sum((ids == e).to(tl.int32), axis=0)
    tl.store(counts_ptr + e, count)


@triton.jit
def moe_place_kernel(sorted_ptr, blocks_ptr, counts_ptr, ids_ptr, slots, E: tl.constexpr,
                     BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr, SCAN: tl.constexpr,
                     PDL: tl.constexpr = 0):
    """Expert e = program_id(0)'s slots at its offset in sorted_ptr (the experts before it,
    each padded to BLOCK_M), then padding (`slots`, no slot); its blocks' entries in
    blocks_ptr; program 0 writes the block count to counts_ptr[E]."""
    enter(PDL)
    e = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    counts = tl.load(counts_ptr + experts, mask=experts < E, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    offset = tl.sum(tl.where(experts < e, padded, 0), axis=0)
    mine = tl.sum(tl.where(experts == e, counts, 0), axis=0)
    mine_padded = tl.sum(tl.where(experts == e, padded, 0), axis=0)
    if e == 0:
        tl.store(counts_ptr + E, tl.sum(padded, axis=0) // BLOCK_M)
    placed = 0
    for start in range(0, slots, SCAN):
        i = start + tl.arange(0, SCAN)
        hit = tl.load(ids_ptr + i, mask=i < slots, other=-1) == e
        rank = tl.cumsum(hit.to(tl.int32), axis=0) - 1
        tl.store(sorted_ptr + offset + placed + rank, i, mask=hit)
        placed += tl.sum(hit.to(tl.int32), axis=0)
    pad = mine + tl.arange(0, BLOCK_M)
    tl.store(sorted_ptr + offset + pad, slots + tl.zeros([BLOCK_M], dtype=tl.int32),
             mask=pad < mine_padded)
    for b in range(0, mine_padded // BLOCK_M):
        tl.store(blocks_ptr + offset // BLOCK_M + b, e)


@triton.jit
def moe_gemm_kernel(out_ptr, a_ptr, w_ptr, sorted_ptr, blocks_ptr, counts_ptr, weights_ptr,
                    slots, A_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr, N: tl.constexpr,
                    K: tl.constexpr, E: tl.constexpr, TOPK: tl.constexpr,
                    GATHER: tl.constexpr, WEIGHTED: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                    PDL: tl.constexpr = 0):
    """Block program_id(0) of the grouped slots, columns program_id(1): out[slot] = a[row] @
    w[expert].T (w [E, N, K]); row = slot // TOPK (GATHER: a is the tokens) or slot.
    WEIGHTED: rounded to the dtype, times the slot's weight, rounded again."""
    enter(PDL)
    block = tl.program_id(0)
    if block < tl.load(counts_ptr + E):
        expert = tl.load(blocks_ptr + block).to(tl.int64)
        slot = tl.load(sorted_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
        ok = slot < slots
        row = (slot // TOPK if GATHER else slot).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        w_rows = w_ptr + expert * N * K + cols.to(tl.int64)[None, :] * K
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            a = tl.load(a_ptr + row[:, None] * A_STRIDE + k[None, :],
                        mask=ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = mma(a, w, acc, IEEE)
        if WEIGHTED:
            acc = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
            acc = acc * tl.load(weights_ptr + slot, mask=ok, other=0.0)[:, None]
        slot64 = slot.to(tl.int64)
        tl.store(out_ptr + slot64[:, None] * OUT_STRIDE + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=ok[:, None] & col_ok[None, :])


@triton.jit
def moe_sum_kernel(out_ptr, y_ptr, ids_ptr, shared_ptr, gate_ptr, OUT_STRIDE: tl.constexpr,
                   SHARED_STRIDE: tl.constexpr, GATE_STRIDE: tl.constexpr, H: tl.constexpr,
                   TOPK: tl.constexpr, KP2: tl.constexpr, SHARED: tl.constexpr,
                   BLOCK: tl.constexpr, PDL: tl.constexpr = 0):
    """out[t] = the sum of token t's TOPK rows of y (H wide), lowest expert id first, rounded
    to the dtype after each add; SHARED: + sigmoid(gate[t]) * shared[t], each op rounded."""
    enter(PDL)
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < H
    j = tl.arange(0, KP2)
    ids = tl.load(ids_ptr + t * TOPK + j, mask=j < TOPK, other=2147483647)
    DT: tl.constexpr = out_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in tl.static_range(TOPK):
        slot = tl.min(tl.where(ids == tl.min(ids, axis=0), j, KP2), axis=0)
        ids = tl.where(j == slot, 2147483647, ids)
        y = tl.load(y_ptr + (t * TOPK + slot) * H + cols, mask=ok, other=0.0).to(tl.float32)
        acc = (acc + y).to(DT).to(tl.float32)
    if SHARED:
        g = tl.load(gate_ptr + t * GATE_STRIDE).to(tl.float32)
        g = (1.0 / (1.0 + tl.exp(-g))).to(DT).to(tl.float32)
        shared = tl.load(shared_ptr + t * SHARED_STRIDE + cols, mask=ok, other=0.0).to(tl.float32)
        acc = acc + (g * shared).to(DT).to(tl.float32)
    tl.store(out_ptr + t * OUT_STRIDE + cols, acc.to(DT), mask=ok)


# -- launch shapes, shared by the lowering and the direct launches ------------------------------

def most_blocks(slots: int, experts: int, block_m: int) -> int:
    """The most blocks of block_m rows `slots` slots make, each expert's padded on its own."""
    return -(-(slots + experts * (block_m - 1)) // block_m)


def route_constexprs(attrs: dict, experts: int, logits_stride: int, has_bias: bool) -> dict:
    top_k = attrs["top_k"]
    return dict(LOGITS_STRIDE=logits_stride, E=experts, BLOCK_E=pow2(experts), TOPK=top_k,
                KP2=max(2, pow2(top_k)), RENORMALIZE=int(attrs["renormalize"]),
                ROUND=int(attrs["round_weights"]), SCORING=SCORING[attrs.get("scoring", "softmax")],
                HAS_BIAS=int(has_bias))


def gemm_constexprs(a_stride: int, n: int, k: int, experts: int, top_k: int, gather: bool,
                    block_m: int, ieee: bool) -> dict:
    """moe_gemm_kernel's: gate_up's (gather, from the tokens) or down's (weighted)."""
    return dict(A_STRIDE=a_stride, OUT_STRIDE=n, N=n, K=k, E=experts, TOPK=top_k,
                GATHER=int(gather), WEIGHTED=int(not gather), BLOCK_M=block_m, BLOCK_N=BLOCK_N,
                BLOCK_K=BLOCK_K, IEEE=int(ieee))


def sum_constexprs(out_stride: int, hidden: int, top_k: int, shared_stride: int = 0,
                   gate_stride: int = 0, shared: bool = False) -> dict:
    return dict(OUT_STRIDE=out_stride, SHARED_STRIDE=shared_stride, GATE_STRIDE=gate_stride,
                H=hidden, TOPK=top_k, KP2=max(2, pow2(top_k)), SHARED=int(shared), BLOCK=SUM_BLOCK)


def act_constexprs(inter: int) -> dict:
    return dict(X_STRIDE=2 * inter, OUT_STRIDE=inter, WIDTH=inter, BLOCK=elementwise.BLOCK,
                PAIRS=0)


# -- lowering -----------------------------------------------------------------------------------

def plan_moe(node, ctx):
    x, logits, gate_up, down = node.inputs[:4]
    bias, shared = moe_op.extras(node)
    (out,) = node.outputs
    a = node.attrs
    experts, two_i, hidden = ctx.graph.values[gate_up].shape
    inter, topk = two_i // 2, a["top_k"]
    dtype = ctx.dtype(x)
    size = dtype_size(dtype)
    rows = ctx.rows(x)
    slots = f"({rows}) * {topk}"
    max_slots = ctx.build.max_num_tokens * topk

    def scratch(name: str, nbytes: int, kind: str) -> Ptr:
        return Ptr(ctx.scratch(name, str(nbytes)).ref, kind)

    ids = scratch("moe_ids", 4 * max_slots, "int32")
    weights = scratch("moe_weights", 4 * max_slots, "float32")
    counts = scratch("moe_counts", 4 * (experts + 1), "int32")
    blocks_of = {bm: most_blocks(max_slots, experts, bm) for bm, _ in PATHS}
    sorted_slots = scratch("moe_sorted", 4 * max(bm * n for bm, n in blocks_of.items()), "int32")
    blocks = scratch("moe_blocks", 4 * max(blocks_of.values()), "int32")
    inter_out = scratch("moe_inter", size * max_slots * two_i, dtype)
    act = scratch("moe_act", size * max_slots * inter, dtype)
    y = scratch("moe_y", size * max_slots * hidden, dtype)
    ctx.launch(moe_route_kernel, grid=(rows,), num_warps=1,
               args=dict(ids_ptr=ids, weights_ptr=weights, logits_ptr=ctx.ptr(logits),
                         bias_ptr=ctx.ptr(bias) if bias else weights,
                         scale=F32(a.get("routed_scale", 1.0)), eps=F32(a.get("eps", 0.0))),
               constexprs=route_constexprs(a, experts, ctx.row_stride(logits), bias is not None))
    ctx.launch(moe_count_kernel, grid=(experts,), num_warps=4,
               args=dict(counts_ptr=counts, ids_ptr=ids, slots=I32(slots)),
               constexprs=dict(SCAN=SCAN))

    def grouped(bm: int, when: str, a_ptr: Ptr, a_stride: int, w: str, o: Ptr, n: int, k: int,
                gather: bool) -> None:
        ctx.launch(moe_gemm_kernel, when=when, num_warps=GEMM_WARPS, num_stages=GEMM_STAGES,
                   grid=(f"min(cdiv({slots} + {experts * (bm - 1)}, {bm}), {slots})",
                         f"cdiv({n}, {BLOCK_N})"),
                   args=dict(out_ptr=o, a_ptr=a_ptr, w_ptr=ctx.ptr(w), sorted_ptr=sorted_slots,
                             blocks_ptr=blocks, counts_ptr=counts, weights_ptr=weights,
                             slots=I32(slots)),
                   constexprs=gemm_constexprs(a_stride, n, k, experts, topk, gather, bm,
                                              dtype == "float32"))

    for bm, when in PATHS:
        ctx.launch(moe_place_kernel, grid=(experts,), num_warps=4, when=when,
                   args=dict(sorted_ptr=sorted_slots, blocks_ptr=blocks, counts_ptr=counts,
                             ids_ptr=ids, slots=I32(slots)),
                   constexprs=dict(E=experts, BLOCK_E=pow2(experts), BLOCK_M=bm, SCAN=SCAN))
        grouped(bm, when, ctx.ptr(x), ctx.row_stride(x), gate_up, inter_out, two_i, hidden, True)
    ctx.launch(ACT_KERNELS[a.get("act", "silu")], num_warps=elementwise.WARPS,
               grid=(slots, f"cdiv({inter}, {elementwise.BLOCK})"),
               args=dict(out_ptr=act, x_ptr=inter_out), constexprs=act_constexprs(inter))
    for bm, when in PATHS:
        grouped(bm, when, act, inter, down, y, hidden, inter, False)
    shared_args = (dict(shared_ptr=ctx.ptr(shared[0]), gate_ptr=ctx.ptr(shared[1])) if shared
                   else dict(shared_ptr=y, gate_ptr=y))
    strides = (dict(shared_stride=ctx.row_stride(shared[0]), gate_stride=ctx.row_stride(shared[1]),
                    shared=True) if shared else {})
    ctx.launch(moe_sum_kernel, grid=(rows, f"cdiv({hidden}, {SUM_BLOCK})"), num_warps=4,
               args=dict(out_ptr=ctx.ptr(out), y_ptr=y, ids_ptr=ids, **shared_args),
               constexprs=sum_constexprs(ctx.row_stride(out), hidden, topk, **strides))


# -- direct launches (tests) --------------------------------------------------------------------

def moe(x, logits, gate_up, down, attrs: dict, bias=None, shared=None, shared_gate=None,
        block_m: int = 16):
    """ops.moe (its attrs; `bias` where attrs["bias"], the shared expert's pair where given)
    on torch tensors through the launches plan_moe makes, slots grouped in blocks of block_m
    rows."""
    t, hidden = x.shape
    experts, two_i, _ = gate_up.shape
    top_k = attrs["top_k"]
    slots = t * top_k
    dev = x.device
    ids = torch.empty(slots, dtype=torch.int32, device=dev)
    weights = torch.empty(slots, dtype=torch.float32, device=dev)
    counts = torch.empty(experts + 1, dtype=torch.int32, device=dev)
    most = most_blocks(slots, experts, block_m)
    sorted_slots = torch.empty(most * block_m, dtype=torch.int32, device=dev)
    blocks = torch.empty(most, dtype=torch.int32, device=dev)
    inter = x.new_empty(slots, two_i)
    y = x.new_empty(slots, hidden)
    out = x.new_empty(t, hidden)
    direct(moe_route_kernel, x)[(t,)](
        ids, weights, logits, weights if bias is None else bias, attrs.get("routed_scale", 1.0),
        attrs.get("eps", 0.0), **route_constexprs(attrs, experts, logits.stride(0), bias is not None),
        num_warps=1)
    direct(moe_count_kernel, x)[(experts,)](counts, ids, slots, SCAN=SCAN)
    direct(moe_place_kernel, x)[(experts,)](sorted_slots, blocks, counts, ids, slots, E=experts,
                                            BLOCK_E=pow2(experts), BLOCK_M=block_m, SCAN=SCAN)

    def grouped(a, w, o, gather):
        n, k = w.shape[1], w.shape[2]
        direct(moe_gemm_kernel, x)[(min(most, slots), triton.cdiv(n, BLOCK_N))](
            o, a, w, sorted_slots, blocks, counts, weights, slots,
            **gemm_constexprs(a.stride(0), n, k, experts, top_k, gather, block_m,
                              x.dtype == torch.float32),
            num_warps=GEMM_WARPS, num_stages=GEMM_STAGES)

    grouped(x, gate_up, inter, True)
    act_out = x.new_empty(slots, two_i // 2)
    direct(ACT_KERNELS[attrs.get("act", "silu")], x)[
        (slots, triton.cdiv(two_i // 2, elementwise.BLOCK))](
        act_out, inter, **act_constexprs(two_i // 2), num_warps=elementwise.WARPS)
    grouped(act_out, down, y, False)
    strides = (dict(shared_stride=shared.stride(0), gate_stride=shared_gate.stride(0), shared=True)
               if shared is not None else {})
    direct(moe_sum_kernel, x)[(t, triton.cdiv(hidden, SUM_BLOCK))](
        out, y, ids, y if shared is None else shared, y if shared is None else shared_gate,
        **sum_constexprs(out.stride(0), hidden, top_k, **strides), num_warps=4)
    return out
