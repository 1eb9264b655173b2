"""Direct launches of the kernels on torch tensors, for tests and benchmarks.

CUDA tensors go through Triton's JIT launcher. CPU tensors work only in a process started with
TRITON_INTERPRET=1, where every kernel runs in Triton's interpreter (which does not support
bfloat16 matrix products); that lets a machine with no GPU check the kernels' arithmetic.
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def direct(kernel, like):
    """`kernel`, launchable as kernel[grid](...), for tensors on `like`'s device."""
    if like.device.type != "cuda" and not interpreting():
        raise RuntimeError("kernels run on CPU tensors only under TRITON_INTERPRET=1")
    return kernel
