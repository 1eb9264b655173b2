"""Weights into L2 while a small step's attention leaves the memory idle (SM 90 and newer).

A decode step of a few sequences reads each layer's weights once, at the memory's rate, except
while its attention runs: a few microseconds of latency-bound work over a short KV cache in
which DRAM idles. The decode kernel (attention.paged_decode_kernel) then gets extra programs
that prefetch the weights of the GEMMs after it (the o-projection's, then the head of the
gate/up projection's; next_weights), up to the build's `l2_prefetch_mb`, so those GEMMs read
them from L2. They issue `cp.async.bulk.prefetch.L2` (a cache hint, fire-and-forget: values and
their order are untouched) after the kernel's PDL wait, so the traffic starts once the q/k/v
GEMM before it has finished with the memory. The extra programs run only in steps of at most
PREFETCH_MAX_TOKENS tokens (prefetch_rows_formula): in larger ones the attention moves enough
KV bytes to keep the memory busy, and would push the prefetched lines out of L2 before use.

The instruction is Hopper's, like PDL's: kernels compiled without PDL (older targets, or a
Triton without grid dependency control) and Triton's interpreter prefetch nothing.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.ir import dtype_size
from kiln.builder.kernels.rounding import INTERPRETED

MAX_RANGES = 4  # weight ranges a launch prefetches
CHUNK = tl.constexpr(16384)  # bytes one prefetch instruction asks for
PREFETCH_PROGRAMS = 64  # the most programs that prefetch (rows of NKV x S decode programs)
PREFETCH_MAX_TOKENS = 16
LINEARS = ("linear", "linear_fp8", "linear_w8a8", "linear_wo")
# Where the weights after an attention stop being worth fetching early: the next layer's.
STOP = ("attention", "moe")


def next_weights(graph, node, budget: int) -> list[tuple[str, int]]:
    """[(weight value, bytes to prefetch from its start)] of the linears after `node`, in the
    order they run, up to `budget` bytes (the last one cut short), before the next attention
    or MoE; at most MAX_RANGES, none under 16 bytes."""
    ranges: list[tuple[str, int]] = []
    left = budget
    start = graph.nodes.index(node) + 1
    for later in graph.nodes[start:]:
        if later.op in STOP or left < 16 or len(ranges) == MAX_RANGES:
            break
        if later.op not in LINEARS:
            continue
        for name in later.inputs[1:]:
            value = graph.values[name]
            if value.kind != "weight" or len(ranges) == MAX_RANGES:
                continue
            size = dtype_size(value.dtype)
            for dim in value.shape:
                size *= int(dim)
            take = min(size, left) // 16 * 16
            if take:
                ranges.append((name, take))
                left -= take
    return ranges


def prefetch_rows_formula(nkv: int, splits: str) -> str:
    """Rows of NKV x S prefetch programs the decode launch adds after its BD rows."""
    return (f"(BD > 0 and T <= {PREFETCH_MAX_TOKENS}) * "
            f"cdiv({PREFETCH_PROGRAMS}, {nkv} * {splits})")


# One bulk prefetch of $2 bytes at $1 where $2 > 0, by the first warp only: a vector of 32
# lanes sits whole in each warp of a larger program, and the first warp's copy suffices.
_ASM = tl.constexpr("""{
  .reg .pred p, w;
  .reg .b32 t;
  mov.u32 t, %tid.x;
  setp.lt.u32 w, t, 32;
  setp.gt.s32 p, $2, 0;
  and.pred p, p, w;
  @p cp.async.bulk.prefetch.L2.global [$1], $2;
  mov.u32 $0, 0;
}""")
LANES = tl.constexpr(32)


@triton.jit
def _prefetch_range(ptr, nbytes, part, parts):
    """This part's share of ptr[0:nbytes] (bytes; ptr 16-byte aligned, nbytes a multiple of
    16) asked into L2, CHUNK bytes an instruction, LANES chunks a vector."""
    base = ptr.to(tl.pointer_type(tl.int8))
    per = tl.cdiv(tl.cdiv(nbytes, parts), CHUNK) * CHUNK
    lo = part * per
    hi = tl.minimum(lo + per, nbytes)
    for c0 in range(lo, hi, LANES * CHUNK):
        start = c0 + tl.arange(0, LANES) * CHUNK
        size = tl.maximum(tl.minimum(hi - start, CHUNK), 0)
        tl.inline_asm_elementwise(_ASM, "=r,l,r", [base + start, size], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def prefetch(part, parts, r0_ptr, r0_bytes, r1_ptr, r1_bytes, r2_ptr, r2_bytes, r3_ptr, r3_bytes,
             RANGES: tl.constexpr, PDL: tl.constexpr):
    """Part `part` of `parts` of each of the first RANGES ranges, into L2 (where PDL: SM 90)."""
    if not INTERPRETED and PDL >= 1:
        if RANGES >= 1:
            _prefetch_range(r0_ptr, r0_bytes, part, parts)
        if RANGES >= 2:
            _prefetch_range(r1_ptr, r1_bytes, part, parts)
        if RANGES >= 3:
            _prefetch_range(r2_ptr, r2_bytes, part, parts)
        if RANGES >= 4:
            _prefetch_range(r3_ptr, r3_bytes, part, parts)

