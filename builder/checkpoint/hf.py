"""Reader for HuggingFace model directories (safetensors or pytorch_model.bin, single or sharded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from kiln.builder.errors import KilnError

from .base import Checkpoint, one_line
from .hf_files import (language_model_config, load_bin, locate_weights, read_config,
                       safetensors_header)
from .names import canonical_from_hf, fused_parts_from_hf, is_fused_hf
from .prequantized import recognise as recognise_prequantized
from .tokenizer import save_hf_tokenizer


@dataclass(slots=True, frozen=True)
class _Entry:
    """Where one canonical tensor lives: file index, HF name, and its stored shape/dtype;
    `rows`: the rows [start, end) of a fused HF tensor it is, of its `expert`-th matrix where
    the tensor stacks a layer's experts."""

    file: int
    hf_name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    rows: tuple[int, int] | None = None
    expert: int | None = None

    def part(self, tensor):
        """This entry's part of its HF tensor (a tensor or a safetensors slice)."""
        if self.expert is not None:
            return tensor[self.expert, self.rows[0]:self.rows[1]]
        return tensor[self.rows[0]:self.rows[1]] if self.rows else tensor


class HFCheckpoint(Checkpoint):
    """A HuggingFace directory; safetensors files stay open, .bin files stay memory-mapped."""

    def __init__(self, directory: Path):
        self.path = directory
        raw = read_config(directory)
        self.hf_config = language_model_config(raw)
        # A pre-quantized checkpoint Kiln reads (prequantized.py), else None; KilnError for
        # formats it does not read.
        self.prequantized = recognise_prequantized(directory, raw)
        from kiln.builder.models.config import ARCHITECTURES

        archs = self.hf_config.get("architectures") or [None]
        self._post_attention_on_output = getattr(ARCHITECTURES.get(archs[0]),
                                                 "post_attention_on_output", False)
        weights = locate_weights(directory)
        self._kind = weights.kind
        self._handles: list = []
        self._entries: dict[str, _Entry] = {}
        try:
            self._open(weights.files, weights.weight_map)
        except BaseException:
            self.close()
            raise
        self._settle_tied_head()
        if self.prequantized:
            self.prequantized.attach(self, _Entry)
        self._check_complete()

    def _open(self, files: list[Path], weight_map: dict[str, Path] | None) -> None:
        for index, path in enumerate(files):
            if self._kind == "safetensors":
                metas = safetensors_header(path)
                try:
                    self._handles.append(safe_open(str(path), framework="pt"))
                except Exception as error:
                    raise KilnError(f"{path} cannot be opened as safetensors ({one_line(error)}); "
                                    "re-download the checkpoint") from None
            else:
                state = load_bin(path)
                self._handles.append(state)
                metas = {name: (tuple(t.shape), t.dtype) for name, t in state.items()}
            if weight_map is not None:
                listed = [name for name, shard in weight_map.items() if shard == path]
                absent = [name for name in listed if name not in metas]
                if absent:
                    raise KilnError(f"{path} lacks tensor {absent[0]!r} that the shard index "
                                    "lists for it; re-download the checkpoint")
            for hf_name, (shape, dtype) in metas.items():
                if self._add_fused(index, hf_name, shape, dtype):
                    continue
                name = canonical_from_hf(hf_name, self._post_attention_on_output)
                if name is None and self.prequantized:
                    name = self.prequantized.canonical(hf_name)
                if name is not None and name not in self._entries:
                    self._entries[name] = _Entry(index, hf_name, shape, dtype)

    def _add_fused(self, index: int, hf_name: str, shape: tuple[int, ...], dtype) -> bool:
        """Offers the parts of a fused q/k/v, gate/up or experts tensor as their canonical
        tensors."""
        if self.prequantized and is_fused_hf(hf_name):
            raise KilnError(f"{self.path} is a pre-quantized checkpoint ({self.prequantized.method}) "
                            f"with fused tensors ({hf_name}), which Kiln does not read; build from "
                            "the unquantized checkpoint with --quant")
        try:
            fused = fused_parts_from_hf(hf_name, self.hf_config)
        except KeyError as missing:
            raise KilnError(f"config.json has no {missing.args[0]!r}, needed to split {hf_name}; "
                            "is the checkpoint complete?") from None
        if fused is None:
            return False
        lead, parts = fused
        if tuple(shape[:len(lead)]) != lead:
            implied = (f"{lead[0]} rows" if len(lead) == 1 else
                       f"{lead[0]} experts of {lead[1]} rows")
            raise KilnError(f"tensor {hf_name} has shape {list(shape)} but config.json implies "
                            f"{implied}; the checkpoint and its config.json do not match")
        for name, expert, start, end in parts:
            self._entries.setdefault(name, _Entry(index, hf_name, (end - start, *shape[len(lead):]),
                                                  dtype, (start, end), expert))
        return True

    def _settle_tied_head(self) -> None:
        # save_pretrained drops lm_head when it is tied; when config.json does not say, the
        # files decide. A tied model's stored lm_head copy is redundant and not offered.
        has_head = "lm_head.weight" in self._entries
        if "tie_word_embeddings" not in self.hf_config:
            self.hf_config["tie_word_embeddings"] = not has_head
        if self.hf_config["tie_word_embeddings"] and has_head:
            del self._entries["lm_head.weight"]

    def _names(self) -> dict[str, _Entry]:
        return self._entries

    def _meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self._entries[name]
        return entry.shape, entry.dtype

    def _load(self, name: str) -> torch.Tensor:
        if not self._handles:
            raise KilnError(f"checkpoint {self.path} is closed; open it again to read {name!r}")
        if self.prequantized and name in self.prequantized.dequantized:
            return self.prequantized.load(name)
        entry = self._entries[name]
        handle = self._handles[entry.file]
        if self._kind == "safetensors":
            if entry.rows:
                return entry.part(handle.get_slice(entry.hf_name))
            return handle.get_tensor(entry.hf_name)
        # A fresh tensor, as safetensors gives: callers may modify it in place.
        return entry.part(handle[entry.hf_name]).clone()

    def save_tokenizer(self, out_dir: str | Path) -> None:
        save_hf_tokenizer(self.path, Path(out_dir), self.hf_config)

    def close(self) -> None:
        for handle in self._handles:
            if hasattr(handle, "__exit__"):
                handle.__exit__(None, None, None)
        self._handles = []
