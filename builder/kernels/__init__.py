"""GPU kernels of Kiln's plans: Triton kernels compiled ahead of time to cubins, GEMMs through
cuBLASLt, and the program the C++ plan executor (csrc/gpu) runs.

    bundle = compile_plan(plan, build)   # KernelBundle(header: JSON-able dict, blobs: {key: cubin})

With no Triton installed, compile_plan returns an empty bundle: the engine then has no GPU
program and runs on the CPU reference backend only.
"""
from __future__ import annotations

import importlib.util

from kiln.builder.engine.writer import KernelBundle

__all__ = ["KernelBundle", "compile_plan", "triton_available"]


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def compile_plan(graph, build, progress=None) -> KernelBundle:
    """Lowers `graph` (a plan with its memory plan) and compiles its kernels for every SM in
    build.targets. `progress(done, total)` is called after each compiled kernel."""
    if not triton_available():
        return KernelBundle()
    from kiln.builder.kernels.bundle import build_bundle
    return build_bundle(graph, build, progress)
