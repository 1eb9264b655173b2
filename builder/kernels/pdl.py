"""Programmatic dependent launch (SM 90 and newer).

A kernel launched with the programmatic-stream-serialization attribute may start while the
kernel before it in the stream is still running. Every plan kernel takes a `PDL` constexpr
(0 by default; `aot.compile_spec` sets it for SM 90 and newer) and calls `enter(PDL)` as its
first statement: it waits there until the previous kernel has finished and its writes are
visible, so nothing reads or writes memory before its producers are done, while its launch and
block start overlap the previous kernel's end. With PDL = 2 it then also lets the next kernel
launch at once (its blocks are placed and wait in turn), rather than as its own blocks exit.
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
HOLD = frozenset({"rope_kv_kernel", "paged_attention_kernel", "paged_decode_kernel",
                  "paged_decode_reduce_kernel"})

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
