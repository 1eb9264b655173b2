"""The interface every checkpoint reader offers the builder."""

from __future__ import annotations

import abc
import json
from pathlib import Path

import torch

from kiln.builder.errors import KilnError

from .names import required_names, sort_key


class Checkpoint(abc.ABC):
    """A model checkpoint read lazily, one tensor at a time, under canonical weight names.

    Subclasses fill `path`, `hf_config` and the canonical-name table in `__init__`; opening
    validates the files cheaply (headers and sizes), so a damaged download fails before any build.
    """

    path: Path
    hf_config: dict

    def names(self) -> list[str]:
        """Canonical names of the tensors present, in model order."""
        return sorted(self._names(), key=sort_key)

    def __contains__(self, name: str) -> bool:
        return name in self._names()

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """(shape, dtype as stored) of one tensor, read from headers only."""
        self._check_name(name)
        return self._meta(name)

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor in HF layout, read on demand and cast to `dtype` (stored dtype if None)."""
        self._check_name(name)
        tensor = self._load(name)
        return tensor if dtype is None else tensor.to(dtype)

    @abc.abstractmethod
    def save_tokenizer(self, out_dir: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and, when known, generation_config.json."""

    def close(self) -> None:
        """Release open files and memory maps; the checkpoint is unusable afterwards."""

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @abc.abstractmethod
    def _names(self) -> set[str] | dict[str, object]:
        """The canonical names present (any container supporting `in` and iteration)."""

    @abc.abstractmethod
    def _meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]: ...

    @abc.abstractmethod
    def _load(self, name: str) -> torch.Tensor: ...

    def _check_name(self, name: str) -> None:
        if name not in self._names():
            raise KilnError(f"checkpoint {self.path} has no tensor {name!r}; "
                            "check that the checkpoint matches the model being built")

    def _check_complete(self) -> None:
        """Refuse a checkpoint that lacks any tensor the decoder needs; one of a model Kiln
        does not build (another architecture) is refused for that, not for its tensors."""
        from kiln.builder.models.config import ARCHITECTURES

        num_layers = int(self.hf_config.get("num_hidden_layers", 0))
        tied = bool(self.hf_config.get("tie_word_embeddings", False))
        spec = ARCHITECTURES.get((self.hf_config.get("architectures") or [None])[0])
        absent = () if spec is None else spec.absent_layer_parts
        present = self._names()
        missing = [n for n in required_names(num_layers, tied, absent) if n not in present]
        if missing:
            if self.hf_config.get("architectures"):
                from kiln.builder.models.config import ModelConfig

                ModelConfig.from_hf(self.hf_config)  # refuses another architecture by name
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise KilnError(f"checkpoint {self.path} lacks tensors {shown}; "
                            "re-download the checkpoint or check that it is a complete model")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def one_line(error: BaseException) -> str:
    """An exception's text squeezed onto one short line, for embedding in a KilnError."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
