"""Writes a Triton Inference Server model repository that serves a Kiln engine.

```
REPO/
  preprocessing/   config.pbtxt  1/model.py   text -> token ids (the engine's tokenizer)
  NAME/            config.pbtxt  1/model.py   decoupled; every request into one Kiln executor
  postprocessing/  config.pbtxt  1/model.py   token ids -> text, incrementally
  ensemble/        config.pbtxt  1/           chains the three; what clients call
```

The models run on Triton's Python backend in a Python that has Kiln installed.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiln.builder.engine import load_engine
from kiln.builder.errors import KilnError, os_error_as
from kiln.runtime.triton import model_configs as mc
from kiln.runtime.triton.pbtxt import to_pbtxt

TEMPLATES = Path(__file__).parent / "templates"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(slots=True)
class RepositoryOptions:
    """What the engine model's config.pbtxt passes to ModelRunner.from_dir."""
    name: str = "kiln"
    max_batch_size: int | None = None           # default: the engine's
    max_num_tokens: int | None = None           # default: the engine's
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_kv_cache_reuse: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name in (mc.PREPROCESSING, mc.POSTPROCESSING,
                                                       mc.ENSEMBLE):
            raise KilnError(f"--name {self.name!r} cannot name the engine model; use letters, "
                            "digits, '_', '-' or '.', and not preprocessing, postprocessing or "
                            "ensemble")
        if not 0.0 < self.kv_cache_free_gpu_memory_fraction <= 1.0:
            raise KilnError("kv_cache_free_gpu_memory_fraction must be in (0, 1], got "
                            f"{self.kv_cache_free_gpu_memory_fraction}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise KilnError(f"device {self.device!r} is not one of auto, cpu, cuda")


def write_repository(engine_dir, output, options: RepositoryOptions | None = None, *,
                     overwrite: bool = False) -> Path:
    """Writes the repository; returns its path. The engine is loaded once to check it and to
    read its limits; the repository refers to it by absolute path."""
    options = options or RepositoryOptions()
    engine_dir = Path(engine_dir).resolve()
    engine = load_engine(engine_dir)
    build = engine.config.build
    max_batch_size = build.limit("max_batch_size", options.max_batch_size)
    if options.max_num_tokens is not None:
        build.limit("max_num_tokens", options.max_num_tokens)
    if not (engine.tokenizer_dir / "tokenizer.json").is_file():
        raise KilnError(f"the engine has no tokenizer ({engine.tokenizer_dir}/tokenizer.json is "
                        "missing); rebuild it from a checkpoint that has one")
    out = Path(output)
    if out.exists():
        if not overwrite:
            raise KilnError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    tokenizer_dir = str(engine.tokenizer_dir.resolve())
    engine_params = {
        "engine_dir": str(engine_dir), "max_batch_size": max_batch_size,
        "max_num_tokens": options.max_num_tokens,
        "kv_cache_free_gpu_memory_fraction": options.kv_cache_free_gpu_memory_fraction,
        "enable_kv_cache_reuse": options.enable_kv_cache_reuse, "device": options.device}
    models = {
        mc.PREPROCESSING: (mc.preprocessing_config(max_batch_size, tokenizer_dir), "preprocessing.py"),
        options.name: (mc.engine_config(options.name, max_batch_size, engine_params), "engine.py"),
        mc.POSTPROCESSING: (mc.postprocessing_config(max_batch_size, tokenizer_dir), "postprocessing.py"),
        mc.ENSEMBLE: (mc.ensemble_config(options.name, max_batch_size), None),
    }
    with os_error_as(f"cannot write the model repository {out}: {{reason}}; pass --output a path "
                     "in a directory you can write to"):
        for name, (config, template) in models.items():
            version = out / name / "1"
            version.mkdir(parents=True)
            (out / name / "config.pbtxt").write_text(to_pbtxt(config))
            if template:
                shutil.copyfile(TEMPLATES / template, version / "model.py")
    return out
