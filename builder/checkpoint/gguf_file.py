"""Reader for llama.cpp GGUF files: memory-mapped, dequantized one tensor at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kiln.builder.errors import KilnError

from .base import Checkpoint, one_line
from .gguf_config import build_hf_config
from .gguf_format import GGUFFile, TensorInfo, Truncated
from .names import canonical_from_gguf, gguf_expert_parts
from .prequantized import LINEARS
from .tokenizer import save_gguf_tokenizer

GGUF_MAGIC = b"GGUF"
_REDOWNLOAD = "re-download the file"


@dataclass(slots=True, frozen=True)
class _Entry:
    index: int  # position in the file's tensor table; entries hold no view of the memory map
    shape: tuple[int, ...]  # HF order (GGUF lists dims fastest-first)
    dtype: torch.dtype  # as stored; quantized tensors report their dequantized float32
    unpermute_heads: int  # > 0: undo llama.cpp's Q/K row interleave over this many heads
    expert: int | None = None  # the matrix of a layer's stacked experts this is


def is_gguf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == GGUF_MAGIC


class GGUFCheckpoint(Checkpoint):
    """A .gguf file; tensors keep their quantized bytes until `load` dequantizes one."""

    def __init__(self, path: Path):
        self.path = path
        with path.open("rb") as file:
            magic = file.read(4)
        if magic != GGUF_MAGIC:
            raise KilnError(f"{path} is not a GGUF file (starts with {magic!r}, expected "
                            f"{GGUF_MAGIC!r}); pass a .gguf file made by llama.cpp or a "
                            "HuggingFace model directory")
        self._reader = self._open_reader(path)
        self._metadata = self._reader.fields
        self._header_digest = self._reader.header_digest()  # what the tokenizer is made from
        if int(self._metadata.get("split.count", 1)) > 1:
            raise KilnError(f"{path} is one part of a split GGUF; merge the parts into one file "
                            "with `llama-gguf-split --merge` and pass that")
        tensors = {t.name: t for t in self._reader.tensors}
        shapes = {name: tuple(reversed(t.dims)) for name, t in tensors.items()}
        rope_freqs = tensors.get("rope_freqs.weight")
        self.hf_config = build_hf_config(
            path, self._metadata, set(tensors), shapes,
            None if rope_freqs is None else self._dequantize(rope_freqs))
        # llama.cpp permutes Q/K rows only for its "llama" graph (interleaved RoPE);
        # qwen2/qwen3 use NeoX RoPE and are stored in HF order.
        permuted = self._metadata["general.architecture"] == "llama"
        heads = {"q": self.hf_config["num_attention_heads"], "k": self.hf_config["num_key_value_heads"]}
        self._entries: dict[str, _Entry] = {}
        self._stack: tuple[int, np.ndarray] | None = None  # the stacked experts last dequantized
        experts = int(self.hf_config.get("num_experts", 0))
        for index, tensor in enumerate(self._reader.tensors):
            parts = gguf_expert_parts(tensor.name, experts)
            if parts is not None:
                stacked = shapes[tensor.name]
                if parts[0][1] is not None and stacked[0] != experts:
                    raise KilnError(f"{path}: tensor {tensor.name} stacks {stacked[0]} experts, "
                                    f"its metadata says {experts}; {_REDOWNLOAD}")
                for name, expert in parts:
                    shape = stacked if expert is None else stacked[1:]
                    self._entries[name] = _Entry(index, shape, _stored_dtype(tensor), 0, expert)
                continue
            name = canonical_from_gguf(tensor.name)
            if name is None:
                continue
            part = name.split(".")[2] if name.startswith("layers.") else ""
            self._entries[name] = _Entry(index, shapes[tensor.name], _stored_dtype(tensor),
                                         heads[part] if permuted and part in heads else 0)
        self._check_complete()
        self.block_size = self._linear_block_size()

    @staticmethod
    def _open_reader(path: Path) -> GGUFFile:
        # The tokenizer's token and merge lists are read by save_tokenizer, not here.
        def keep(key: str) -> bool:
            return not key.startswith("tokenizer.ggml.") or key.endswith("_id")

        try:
            return GGUFFile(path, keep)
        except Truncated as error:
            size = path.stat().st_size
            raise KilnError(f"{path} is truncated: it needs at least {error.needed} bytes but "
                            f"has {size}; {_REDOWNLOAD}") from None
        except Exception as error:  # ValueError, OSError (an empty file cannot be mapped), ...
            raise KilnError(f"{path} is not a readable GGUF file ({one_line(error)}); "
                            f"{_REDOWNLOAD}") from None

    def _linear_block_size(self) -> int | None:
        """Input channels per quantization block shared by every decoder linear weight (32 for
        Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0; 256 for K-quants), None where they differ or are
        floats: the groups an int4 build of the file has natively (--quant-group-size)."""
        from gguf import GGML_QUANT_SIZES

        sizes = {GGML_QUANT_SIZES[self._reader.tensors[entry.index].tensor_type][0]
                 for name, entry in self._entries.items()
                 if name.startswith("layers.") and name.split(".")[2] in LINEARS}
        size = sizes.pop() if len(sizes) == 1 else 1
        return size if size > 1 else None

    def _names(self) -> dict[str, _Entry]:
        return self._entries

    def _meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self._entries[name]
        return entry.shape, entry.dtype

    def _load(self, name: str) -> torch.Tensor:
        if self._reader is None:
            raise KilnError(f"checkpoint {self.path} is closed; open it again to read {name!r}")
        entry = self._entries[name]
        if entry.expert is not None:  # each expert of a stack in turn: dequantized once
            if self._stack is None or self._stack[0] != entry.index:
                tensor = self._reader.tensors[entry.index]
                self._stack = (entry.index, self._dequantize(tensor).reshape(
                    -1, *entry.shape))
            array = self._stack[1][entry.expert]
        else:
            array = self._dequantize(self._reader.tensors[entry.index]).reshape(entry.shape)
        if entry.unpermute_heads:
            array = _unpermute_rows(array, entry.unpermute_heads)
        tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
        return tensor if entry.dtype == torch.float32 else tensor.to(entry.dtype)

    def _dequantize(self, tensor: TensorInfo) -> np.ndarray:
        from gguf import quants

        try:
            return quants.dequantize(self._reader.data(tensor), tensor.tensor_type)
        except NotImplementedError:
            raise KilnError(f"{self.path}: tensor {tensor.name} is stored as "
                            f"{tensor.tensor_type.name}, which the gguf package cannot "
                            "dequantize; use a file quantized as Q4_0/Q4_1/Q5/Q8_0/K-quants "
                            "or F16") from None

    def save_tokenizer(self, out_dir: str | Path) -> None:
        generation = {k: self.hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                      if k in self.hf_config}
        save_gguf_tokenizer(self.path, Path(out_dir), self._metadata.get("tokenizer.chat_template"),
                            generation, self._header_digest)

    def close(self) -> None:
        # Dropping the file drops the last references to its memory map.
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._stack = None


def _stored_dtype(tensor) -> torch.dtype:
    from gguf import GGMLQuantizationType as Q

    stored = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
    return stored.get(tensor.tensor_type, torch.float32)


def _unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's convert_hf_to_gguf permute: per head, rows go from the interleaved
    (pair-wise) RoPE order back to HF's rotate-half order (first half, then second half)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return (weight.reshape(n_heads, half, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))
