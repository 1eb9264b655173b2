"""Row gathers: embedding lookup (ids into the table) and gather_last (last token of each
sequence). References: kiln.builder.ops.embedding. One program copies one row."""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.direct import direct
from kiln.builder.kernels.norm import row_warps
from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.spec import pow2


@triton.jit
def gather_rows_kernel(out_ptr, src_ptr, index_ptr, SRC_STRIDE: tl.constexpr,
                       OUT_STRIDE: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr,
                       PDL: tl.constexpr = 0):
    enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    src = tl.load(index_ptr + row).to(tl.int64)
    for start in tl.static_range(0, WIDTH, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < WIDTH
        x = tl.load(src_ptr + src * SRC_STRIDE + cols, mask=mask, other=0.0)
        tl.store(out_ptr + row * OUT_STRIDE + cols, x, mask=mask)


def _block(width: int) -> int:
    return min(pow2(width), 8192)


def _plan(src_at: int, index_at: int):
    def plan(node, ctx):
        src, index, (out,) = node.inputs[src_at], node.inputs[index_at], node.outputs
        width = ctx.width(out)
        block = _block(width)
        ctx.launch(gather_rows_kernel, grid=(ctx.rows(out),), num_warps=row_warps(block),
                   args=dict(out_ptr=ctx.ptr(out), src_ptr=ctx.ptr(src), index_ptr=ctx.ptr(index)),
                   constexprs=dict(SRC_STRIDE=ctx.row_stride(src), OUT_STRIDE=ctx.row_stride(out),
                                   WIDTH=width, BLOCK=block))
    return plan


plan_embedding = _plan(src_at=1, index_at=0)      # embedding(ids, table)
plan_gather_last = _plan(src_at=0, index_at=1)    # gather_last(x, last_token_index)


def gather_rows(src, index):
    """out[i] = src[index[i]]"""
    width = src.shape[1]
    out = src.new_empty((index.shape[0], width))
    block = _block(width)
    direct(gather_rows_kernel, src)[(index.shape[0],)](
        out, src, index, SRC_STRIDE=src.stride(0), OUT_STRIDE=out.stride(0), WIDTH=width,
        BLOCK=block, num_warps=row_warps(block))
    return out
