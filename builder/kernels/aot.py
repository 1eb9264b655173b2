"""Ahead-of-time compilation of kernel specializations to cubins, with an on-disk cache.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", sm, 32))` needs no GPU. The cache
(~/.cache/kiln/kernels, or $KILN_KERNEL_CACHE) is keyed by the Triton version, the kernel's
source hash (JITFunction.cache_key covers the function and what it calls), the
specialization and the SM, so a rebuild of an unchanged engine compiles nothing.

`compile_specs` compiles what the cache lacks on several threads, one a core: Triton's passes
and ptxas run outside the GIL, so they overlap.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kiln.builder.host import usable_cpus
from kiln.builder.kernels import pdl
from kiln.builder.kernels.spec import KernelSpec, source_key

_PARAM = re.compile(r"\.param\s+(?:\.align\s+\d+\s+)?\.(u64|b64|s64|u32|b32|s32|f32|f64|b8)\b")


@dataclass(slots=True)
class Compiled:
    cubin: bytes
    meta: dict  # name, num_warps, shared, params (PTX types), pdl, scratch sizes
    cached: bool = False


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_KERNEL_CACHE", Path.home() / ".cache" / "kiln" / "kernels"))


def entry_params(ptx: str, name: str) -> list[str]:
    """The PTX types of the kernel entry's parameters, in order (Triton appends scratch
    pointers after the signature's runtime parameters: their number differs by version)."""
    start = ptx.index(f".entry {name}(")
    end = ptx.index(")", start)
    types = _PARAM.findall(ptx[start:end])
    mapping = {"b64": "u64", "s64": "u64", "b32": "u32", "s32": "u32"}
    return [mapping.get(t, t) for t in types]


def _cache_key(spec: KernelSpec, sm: int) -> str:
    data = json.dumps([triton.__version__, source_key(spec.fn), spec.describe(), sm,
                       pdl.mode(sm, spec.fn.fn.__name__)], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _paths(spec: KernelSpec, sm: int) -> tuple[Path, Path]:
    key = _cache_key(spec, sm)
    return cache_dir() / f"{key}.cubin", cache_dir() / f"{key}.json"


def cached(spec: KernelSpec, sm: int) -> Compiled | None:
    """The cache's entry for (spec, sm), or None (absent or damaged)."""
    return _read(*_paths(spec, sm))


def _read(cubin_path: Path, meta_path: Path) -> Compiled | None:
    if cubin_path.is_file() and meta_path.is_file():
        try:
            return Compiled(cubin_path.read_bytes(), json.loads(meta_path.read_text()), cached=True)
        except (OSError, ValueError):
            pass  # a damaged entry is rebuilt by compile_spec
    return None


def compile_workers() -> int:
    """The threads compile_specs compiles on: the cores this process may run on."""
    return usable_cpus()


def compile_specs(jobs: list[tuple[KernelSpec, int]], progress=None) -> list[Compiled]:
    """compile_spec of each (spec, sm), in order, on up to compile_workers() threads (a cached
    entry is read, not compiled). `progress(done, total)` after each."""
    results: list[Compiled | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max(1, min(len(jobs), compile_workers()))) as pool:
        futures = {pool.submit(compile_spec, spec, sm): i for i, (spec, sm) in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress:
                progress(done, len(jobs))
    return results


def compile_spec(spec: KernelSpec, sm: int, use_cache: bool = True) -> Compiled:
    cubin_path, meta_path = _paths(spec, sm)
    if use_cache and (hit := _read(cubin_path, meta_path)) is not None:
        return hit
    attrs = {(i,): [["tt.divisibility", 16]] for i in spec.divisible}
    constexprs = dict(spec.constexprs)
    takes_pdl = pdl.PARAM in spec.signature
    pdl_mode = pdl.mode(sm, spec.fn.fn.__name__) if takes_pdl else pdl.OFF
    if takes_pdl:
        constexprs[pdl.PARAM] = pdl_mode
    src = ASTSource(fn=spec.fn, signature=dict(spec.signature), constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", sm, 32),
                            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                     "enable_fp_fusion": True})
    md = kernel.metadata
    runtime = [n for n, t in spec.signature.items() if t != "constexpr"]
    params = entry_params(kernel.asm["ptx"], md.name)
    if len(params) < len(runtime):
        raise RuntimeError(f"{spec.qualname}: PTX entry has {len(params)} parameters, "
                           f"signature has {len(runtime)}")
    waits = "griddepcontrol.wait" in kernel.asm["ptx"]
    if pdl_mode != pdl.OFF and not waits:
        raise RuntimeError(f"{spec.qualname} takes PDL but never waits on its predecessor: "
                           "call pdl.enter(PDL) first")
    meta = {"name": md.name, "num_warps": md.num_warps, "shared": md.shared,
            "params": params, "num_extra_params": len(params) - len(runtime),
            "pdl": pdl_mode != pdl.OFF,
            "global_scratch_size": getattr(md, "global_scratch_size", 0),
            "profile_scratch_size": getattr(md, "profile_scratch_size", 0),
            "triton": triton.__version__}
    # Global scratch (a kernel's TMA descriptors made in the kernel: 128 bytes each, a program's
    # own) is the first of the trailing pointers; each launch names a plan scratch buffer for it
    # (Launch.global_scratch), grid programs x global_scratch_size bytes.
    if meta["profile_scratch_size"]:
        raise RuntimeError(f"{spec.qualname} needs profiling scratch memory, which the plan "
                           "executor does not provide: compile it without instrumentation")
    if meta["global_scratch_size"] and meta["num_extra_params"] < 1:
        raise RuntimeError(f"{spec.qualname} needs global scratch but its entry takes no "
                           "scratch pointer")
    cubin = kernel.asm["cubin"]
    if use_cache:
        _write_atomic(cubin_path, cubin)
        _write_atomic(meta_path, json.dumps(meta).encode())
    return Compiled(cubin, meta)


def cubin_sm(cubin: bytes) -> int:
    """The SM a cubin's machine code is for, from its ELF header (e_flags): the old CUDA ELF
    ABI keeps it in the low byte, the newer one (OS ABI 0x41) in the second byte."""
    if cubin[:4] != b"\x7fELF":
        raise ValueError("not a cubin (no ELF magic)")
    flags = int.from_bytes(cubin[48:52], "little")
    return (flags >> 8) & 0xFF if cubin[7] >= 0x41 else flags & 0xFF
