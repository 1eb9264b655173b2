"""Programmatic dependent launch (SM 90 and newer).

A kernel launched with the programmatic-stream-serialization attribute may start while the
kernel before it in the stream is still running. Every plan kernel takes a `PDL` constexpr
(0 by default; `aot.compile_spec` sets it for SM 90 and newer) and calls `enter(PDL)` before
it touches memory: it waits there until the previous kernel has finished and its writes are
visible, so nothing reads or writes memory before its producers are done, while its launch and
block start overlap the previous kernel's end. Only what no kernel writes may be read before
it: the one-row GEMM (gemm.gemv_kernel, in WEIGHTS_FIRST) loads its first weight tile first.
With PDL = 2 it then also lets the next kernel launch at once (its blocks are placed and wait
in turn), rather than as its own blocks exit.
A kernel launched without the attribute, or on a GPU without the feature, runs the two
instructions as no-ops.
"""
from __future__ import annotations

import triton
import triton.language as tl

PARAM = "PDL"
MIN_SM = 90
OFF, WAIT, WAIT_AND_RELEASE = 0, 1, 2
# Kernels that let the next one launch only as their blocks exit. Released early, the attention
# path (RoPE + KV write, attention, the split-KV reduce) slowed a batch-8 decode step of the
# Llama-3.1-8B shape from 4.56 to 5.18 ms on the H200, where every other kernel's early release
# gains ~2% at batch 1 and 8 (tests/gpu/speed_check.py: "graphs" against "graphs, serial").
# The reduce alone released early (so the o-projection's one-row GEMM could load its first
# weight tile during it) left batch 1 as it was and took batch 8 from 4.50 to 4.76 ms. Every
# kernel releasing the next one before its own wait (so a chain of kernels is placed early)
# measured level with this at batch 1, 8 and 64 (docs/performance.md, 2026-12-04, night).
HOLD = frozenset({"rope_kv_kernel", "paged_attention_kernel", "paged_decode_kernel",
                  "paged_decode_reduce_kernel"})

# Kernels that read their weight (w_ptr, which no kernel writes) before enter(PDL).
WEIGHTS_FIRST = frozenset({"gemv_kernel"})

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    AVAILABLE = True
except ImportError:  # a Triton without grid dependency control: launches stay serial
    AVAILABLE = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


def enabled(sm: int) -> bool:
    """Whether kernels compiled for `sm` wait on their predecessor."""
    return AVAILABLE and sm >= MIN_SM


def mode(sm: int, kernel: str) -> int:
    """PDL's value for `kernel` (a function name) compiled for `sm`."""
    if not enabled(sm):
        return OFF
    return WAIT if kernel in HOLD else WAIT_AND_RELEASE


@triton.jit
def enter(PDL: tl.constexpr):
    if PDL >= 1:
        gdc_wait()
    if PDL >= 2:
        gdc_launch_dependents()
