"""A persistent GEMM for many rows (Hopper's TMA and wgmma), the gate/up GEMM's SiLU-mul inside.

out[M, N] = x[M, K] @ w[N, K].T for 16-bit x and w, row-major. cuBLASLt has no gated epilogue,
so a gate/up GEMM through it writes the [M, 2I] product and a SiLU-mul kernel reads it back
(gate and up rounded to the dtype, then silu(gate) rounded, then the product: as torch rounds
each op). With GLU this kernel writes silu(gate) * up itself, rounded the same way, the [M, 2I]
product never stored: the GEMM's weight is then stored with its gate and up rows in pairs
(passes/fuse_gate_up.py, `pairs`: row 2j gate j, row 2j + 1 up j), so one product of 2 x BN
weight rows gives a tile's gates and ups in adjacent columns, which wgmma's accumulator layout
keeps in one thread: the split costs no data movement, and the tile is the plain GEMM's.

Tiles of BM x BN outputs (BN x BK of w a stage, 2 x BN with GLU), GROUP_M row blocks at a time
so that a weight tile stays in L2 for the row blocks that reuse it; one program an SM walks
the tiles (the grid is min(NSM, tiles)). The TMA descriptors are made in the kernel, in
Triton's global scratch: 128 bytes each, a program's own (LoweringContext.global_scratch).

On an H100, at a 128/128 run's row counts, the Llama-3.1-8B gate/up shape (N 28,672, K 4,096,
bfloat16) with GLU took 637.9 / 1,042.3 / 2,816.2 us at 2,048 / 3,008 / 8,192 rows against
cuBLASLt then silu_mul_kernel's 733.8 / 1,021.1 / 3,034.8 (docs/results/glu-gemm-2026-12-07):
ahead but at 3,008 rows, where 24 row blocks of 128 make 20.4 waves of tiles over 132 SMs. It
is offered as an alternative for more than SMALL_M rows, beside cuBLASLt and the SiLU-mul's
launch; the executor keeps the faster per band of M, and from PREFERRED_FROM_M rows runs it
untimed.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.builder.kernels.pdl import enter
from kiln.builder.kernels.rounding import INTERPRETED

# (BM, BN, BK, num_stages, num_warps, GROUP_M): BN counts output columns (with GLU a tile reads
# 2 x BN weight rows, so both make one 128 x 256 product).
CONFIG = (128, 256, 64, 3, 8, 8)
CONFIG_GLU = (128, 128, 64, 3, 8, 8)
# Bytes of global scratch a program: its three TMA descriptors.
DESCRIPTOR_BYTES = 3 * 128
# The rows from which it is offered: above the small-M alternatives'.
MIN_M = 17
# The rows from which the engine prefers the GLU to cuBLASLt and the SiLU-mul's launch, untimed
# against them (plan: an alternative's preferred_from_m). At load each choice is timed in
# millisecond bursts on a GPU at its top clock, where the GLU ran 5-12% behind on an H100; a
# 128/128 run holds the GPU at its power limit, where the GLU, which never writes the [M, 2I]
# product, ran its whole run 0.4-0.8% faster from 4,096 rows on three H100s (19,474.4 against
# 19,327.8 output tok/s, 19,231.2 against 19,161.4, 19,081.6 against 18,971.7; 2,048 rows gained
# no more: docs/results/kernels-from-2026-12-07, glu-preferred-2026-12-07). At 4,352 rows the
# load's burst timed the two level and the power limit the GLU 5.7% ahead; at 2,080 it is behind
# in both.
PREFERRED_FROM_M = 4096
# TMA and wgmma: Hopper and newer.
MIN_SM = 90


@triton.jit
def _tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of tile_id, GROUP_M row blocks at a time (weight tiles reused in L2)."""
    in_group = GROUP_M * num_pid_n
    first_m = (tile_id // in_group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (tile_id % in_group) % size_m, (tile_id % in_group) // size_m


@triton.jit
def tma_gemm_kernel(out_ptr, x_ptr, w_ptr, M, X_STRIDE: tl.constexpr, OUT_STRIDE: tl.constexpr,
                    N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, GROUP_M: tl.constexpr, GLU: tl.constexpr,
                    PDL: tl.constexpr = 0):
    """out = x @ w.T ([M, N]); GLU: w's N rows are gate/up pairs and out [M, N / 2] is
    silu(gate) * up (each product rounded to out's dtype first, the activation too). In
    Triton's interpreter the tiles are widened to float32 before their products (it multiplies
    bfloat16 tiles wrongly)."""
    enter(PDL)
    OUT_N: tl.constexpr = N // 2 if GLU else N
    W_ROWS: tl.constexpr = 2 * BN if GLU else BN
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[X_STRIDE, 1],
                                       block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1],
                                       block_shape=[W_ROWS, BK])
    o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, OUT_N], strides=[OUT_STRIDE, 1],
                                       block_shape=[BM, BN])
    dt: tl.constexpr = out_ptr.dtype.element_ty
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n: tl.constexpr = OUT_N // BN
    k_tiles: tl.constexpr = K // BK
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, tl.num_programs(0),
                            flatten=True):
        pid_m, pid_n = _tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc = tl.zeros((BM, W_ROWS), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([om, ki * BK])
            b = w_desc.load([on * 2 if GLU else on, ki * BK])
            if INTERPRETED:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b.T, acc)
        if GLU:
            gate, up = tl.split(tl.reshape(acc, (BM, BN, 2)))
            gate = gate.to(dt).to(tl.float32)
            up = up.to(dt).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
            o_desc.store([om, on], (act * up).to(dt))
        else:
            o_desc.store([om, on], acc.to(dt))


def fits(n: int, k: int, x_stride: int, out_stride: int, dtype: str, glu: bool) -> bool:
    """Whether the kernel takes this GEMM: 16-bit, TMA's 16-byte row strides, whole tiles of
    the weight's rows (so no tile's gates and ups straddle its end) and of K."""
    bm, bn, bk = (CONFIG_GLU if glu else CONFIG)[:3]
    return (dtype in ("bfloat16", "float16") and k % bk == 0 and x_stride % 8 == 0
            and out_stride % 8 == 0 and n % (2 * bn if glu else bn) == 0)


def grid_formula(rows: str, n: int, glu: bool) -> str:
    """min(NSM, tiles) at `rows` rows."""
    bm, bn = (CONFIG_GLU if glu else CONFIG)[:2]
    tiles_n = (n // 2 if glu else n) // bn
    return f"min(NSM, cdiv({rows}, {bm}) * {tiles_n})"


def constexprs(n: int, k: int, x_stride: int, out_stride: int, glu: bool) -> dict:
    bm, bn, bk, _, _, group_m = CONFIG_GLU if glu else CONFIG
    return dict(X_STRIDE=x_stride, OUT_STRIDE=out_stride, N=n, K=k, BM=bm, BN=bn, BK=bk,
                GROUP_M=group_m, GLU=int(glu))


# -- direct launches ----------------------------------------------------------------------------

def _allocator(size: int, alignment: int, stream):
    import torch
    return torch.empty(size, dtype=torch.int8, device="cuda")


def linear_tma(x, w, glu: bool = False, out=None, num_sms: int | None = None):
    """x @ w.T (with `glu`: w's rows gate/up pairs, silu(gate) * up) through tma_gemm_kernel,
    on CUDA tensors (Triton's launcher gets its global scratch from an allocator) or, under
    TRITON_INTERPRET=1, CPU ones."""
    import torch

    from kiln.builder.kernels.direct import direct, interpreting
    from kiln.builder.kernels.symbols import evaluate
    m, k = x.shape
    n = w.shape[0]
    if out is None:
        out = x.new_empty((m, n // 2 if glu else n))
    if not fits(n, k, x.stride(0), out.stride(0), str(x.dtype).removeprefix("torch."), glu):
        raise ValueError(f"tma_gemm_kernel does not take a {n} x {k} weight (glu={glu})")
    _, _, _, stages, warps, _ = CONFIG_GLU if glu else CONFIG
    if num_sms is None:
        num_sms = 4 if interpreting() else torch.cuda.get_device_properties(
            x.device).multi_processor_count
    if not interpreting():
        triton.set_allocator(_allocator)
    grid = (evaluate(grid_formula(str(m), n, glu), {"NSM": num_sms}),)
    direct(tma_gemm_kernel, x)[grid](
        out, x, w, m, **constexprs(n, k, x.stride(0), out.stride(0), glu),
        num_warps=warps, num_stages=stages)
    return out
