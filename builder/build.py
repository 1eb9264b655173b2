"""engine-build's work: checkpoint -> graph -> passes -> kernels -> engine directory."""
from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import os
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from kiln.builder.checkpoint import Checkpoint, open_checkpoint
from kiln.builder.engine.format import FORMAT_VERSION
from kiln.builder.engine.writer import RANK_FILE, KernelBundle, write_config, write_rank_file
from kiln.builder.errors import KilnError, os_error_as
from kiln.builder.ir import dtype_size
from kiln.builder.models import BuildConfig, ModelConfig, build_graph
from kiln.builder.passes import run_pipeline
from kiln.quantize.options import CalibrationOptions
from kiln.quantize.options import prepare as prepare_quantization


def kiln_version() -> str:
    try:
        return importlib.metadata.version("kiln")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(slots=True)
class BuildReport:
    output: Path
    model: ModelConfig
    num_params: int = 0
    engine_bytes: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    ops_before: Counter = field(default_factory=Counter)
    ops_after: Counter = field(default_factory=Counter)
    num_kernels: int = 0
    build: BuildConfig | None = None  # as built: a pre-quantized checkpoint settles its mode


@contextmanager
def _phase(report_phases: dict, name: str):
    start = time.perf_counter()
    yield
    report_phases[name] = time.perf_counter() - start


def _compile_kernels(plan, build: BuildConfig) -> KernelBundle:
    try:
        from kiln.builder.kernels import compile_plan
    except ImportError:
        return KernelBundle()
    return compile_plan(plan, build)


# A full disk or quota while writing the engine: the user's to fix, said in one line.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _prepare_output(output: Path, checkpoint: Path, overwrite: bool) -> Path:
    if output.exists() and not overwrite:
        raise KilnError(f"output directory {output} exists; pass --overwrite to replace it")
    if checkpoint.exists() and (output.resolve() == checkpoint.resolve()
                                or checkpoint.resolve().is_relative_to(output.resolve())):
        raise KilnError(f"output directory {output} holds the checkpoint; choose another --output")
    staging = output.parent / f".{output.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with os_error_as(f"cannot create the output directory {output}: {{reason}}; pass --output a "
                     "path in a directory you can write to"):
        staging.mkdir(parents=True)
    return staging


def build_engine(checkpoint: str | Path | Checkpoint, output: str | Path, build: BuildConfig,
                 overwrite: bool = False, progress: bool = True,
                 calibration: CalibrationOptions | None = None) -> BuildReport:
    """`checkpoint` is a path to open or an open Checkpoint (e.g. RandomCheckpoint); either is
    closed when the build ends. `calibration` says what text --quant calibrates on."""
    output = Path(output)
    phases: dict[str, float] = {}
    with _phase(phases, "open checkpoint"):
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    checkpoint = ckpt.path
    with ckpt:
        model = ModelConfig.from_hf(ckpt.hf_config)
        build.check_against(model)
        report = BuildReport(output, model, num_params=model.num_params(), phases=phases)
        staging = _prepare_output(output, checkpoint, overwrite)
        try:
            with _phase(phases, "tokenizer"):
                ckpt.save_tokenizer(staging / "tokenizer")
            build = prepare_quantization(build, ckpt, staging / "tokenizer", calibration, model)
            with _phase(phases, "declare network"):
                graph = build_graph(model, build, ckpt)
                report.ops_before = Counter(graph.ops())
            with _phase(phases, "passes"):
                plan = run_pipeline(graph, build)
                report.ops_after = Counter(plan.ops())
            calibration_seconds = getattr(build.calibrator, "seconds", 0.0)
            if calibration_seconds:  # quantize_linears calibrates: its own figure
                phases["passes"] -= calibration_seconds
                phases["calibrate"] = calibration_seconds
            with _phase(phases, "compile kernels"):
                kernels = _compile_kernels(plan, build)
                report.num_kernels = len(kernels.blobs)
            with _phase(phases, "write weights"):
                bar = tqdm(total=sum(_nbytes(plan, n) for n in plan.of_kind("weight")), unit="B",
                           unit_scale=True, desc="weights", disable=not progress, leave=False)
                size, crc = write_rank_file(staging / RANK_FILE, plan, kernels, build.dtype,
                                            on_weight=lambda name, nbytes: bar.update(nbytes))
                bar.close()
            write_config(staging / "config.json", {
                "format_version": FORMAT_VERSION,
                "kiln_version": kiln_version(),
                "model": model.to_json(),
                "build": build.to_json(),
                "checksums": {RANK_FILE: {"size": size, "header_crc32": f"{crc:08x}"}},
            })
            if output.exists():
                shutil.rmtree(output)
            staging.rename(output)
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
                raise KilnError(f"writing the engine to {output} failed: {e.strerror}; free space "
                                "there or pass --output another disk") from None
            raise
    report.engine_bytes = size
    report.build = build
    return report


def _nbytes(graph, name: str) -> int:
    v = graph.values[name]
    n = dtype_size(v.dtype)
    for d in v.shape:
        n *= d
    return n
