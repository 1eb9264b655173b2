"""GGUF's header, metadata and tensor table, read straight from the file's memory map.

gguf's own GGUFReader keeps a numpy view of every value it meets, a token list and a merge list
included (~100k strings, seconds to read); this reads each value as a Python object with
`struct`, walks past the arrays the caller does not want, and leaves tensor data in the map.
Values come out as the caller uses them: a str (UTF-8, invalid bytes replaced), an int, a bool,
a float (a float32 as the shortest decimal that is the same float32: 1e-05), or a list of them
(nested arrays flattened, as gguf's reader does).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
# Tensor types stored as plain numbers; the rest are blocks of bytes, which
# gguf.quants.dequantize reads as uint8 rows.
_PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
          28: np.float64}


class Truncated(Exception):
    """A read past the end of the file: `needed` is the size the file would have to have."""

    def __init__(self, needed: int):
        super().__init__(f"the file needs at least {needed} bytes")
        self.needed = needed


@dataclass(slots=True, frozen=True)
class TensorInfo:
    name: str
    tensor_type: GGMLQuantizationType
    dims: tuple[int, ...]  # GGUF's order: fastest-varying first
    offset: int  # from the start of the file


class GGUFFile:
    """One GGUF file's metadata (`fields`) and tensor table (`tensors`), its data mapped.

    keep(key): whether the value of metadata `key` is wanted; the others are read past only (a
    tokenizer's arrays, which the builder reads elsewhere)."""

    def __init__(self, path: Path, keep: Callable[[str], bool] = lambda key: True):
        self._map = np.memmap(path, mode="r")
        self._data = memoryview(self._map)
        self._order = "<"
        self._offset = 0
        if self._bytes(4) != MAGIC:
            raise ValueError("the GGUF magic is missing")
        version = self._read("I")
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            self._order = ">" if sys.byteorder == "little" else "<"
            version = struct.unpack(self._order + "I", struct.pack("<I", version))[0]
        if version not in VERSIONS:
            raise ValueError(f"GGUF version {version} (readable: {', '.join(map(str, VERSIONS))})")
        tensor_count, kv_count = self._read("Q"), self._read("Q")
        self.fields: dict[str, object] = {}
        for _ in range(kv_count):
            key = self._string()
            if key in self.fields:
                raise ValueError(f"metadata key {key!r} appears twice")
            kind = self._read("I")
            if keep(key):
                self.fields[key] = self._value(kind)
            else:
                self._skip(kind)
        infos = [self._tensor_info() for _ in range(tensor_count)]
        self.header_size = self._offset  # the header, metadata and tensor table: what describes the file
        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self._offset // alignment) * alignment
        self.tensors = [TensorInfo(name, kind, dims, start + offset)
                        for name, kind, dims, offset in infos]
        names = {info.name for info in self.tensors}
        if len(names) != len(self.tensors):
            raise ValueError("a tensor name appears twice")
        for info in self.tensors:
            self._check(info.offset + self._nbytes(info))

    def data(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes in the map as gguf.quants.dequantize takes them: plain types as
        their numbers, [rows..., elements]; block-quantized ones as uint8 [rows..., bytes]."""
        dims = tuple(reversed(info.dims))
        stored = self._map[info.offset:info.offset + self._nbytes(info)]
        plain = _PLAIN.get(info.tensor_type)
        if plain is not None:
            return stored.view(np.dtype(plain).newbyteorder(self._order)).reshape(dims)
        block, size = GGML_QUANT_SIZES[info.tensor_type]
        return stored.reshape(*dims[:-1], dims[-1] // block * size)

    def header_digest(self) -> str:
        """SHA-256 of the bytes before the tensor data (metadata, tokenizer and tensor table)."""
        return hashlib.sha256(self._data[:self.header_size]).hexdigest()

    def close(self) -> None:
        # Tensors already read keep their own views of the map alive.
        self._data = self._map = None

    def _nbytes(self, info: TensorInfo) -> int:
        count = int(np.prod(info.dims, dtype=np.int64))
        plain = _PLAIN.get(info.tensor_type)
        if plain is not None:
            return count * np.dtype(plain).itemsize
        block, size = GGML_QUANT_SIZES[info.tensor_type]
        if info.dims and info.dims[0] % block:
            raise ValueError(f"tensor {info.name}: {info.dims[0]} values a row is not a whole "
                             f"number of its type's {block}-value blocks")
        return count // block * size

    def _tensor_info(self) -> tuple[str, int, tuple[int, ...], int]:
        name = self._string()
        dims = tuple(self._read("Q") for _ in range(self._read("I")))
        kind = self._read("I")
        try:
            kind = GGMLQuantizationType(kind)
        except ValueError:
            raise ValueError(f"tensor {name}: unknown tensor type {kind}") from None
        return name, kind, dims, self._read("Q")

    def _check(self, end: int) -> None:
        if end > len(self._data):
            raise Truncated(end)

    def _bytes(self, n: int) -> bytes:
        end = self._offset + n
        self._check(end)
        out = self._data[self._offset:end].tobytes()
        self._offset = end
        return out

    def _read(self, code: str):
        size = struct.calcsize(code)
        self._check(self._offset + size)
        (value,) = struct.unpack_from(self._order + code, self._data, self._offset)
        self._offset += size
        return value

    def _string(self) -> str:
        return self._bytes(self._read("Q")).decode("utf-8", errors="replace")

    def _value(self, kind: int) -> object:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, count = self._read("I"), self._read("Q")
            out: list = []
            for _ in range(count):
                value = self._value(item)
                if item == _ARRAY:
                    out.extend(value)
                else:
                    out.append(value)
            return out
        code = _SCALARS.get(kind)
        if code is None:
            raise ValueError(f"unknown metadata value type {kind}")
        value = self._read(code)
        if kind == _FLOAT32:
            return float(str(np.float32(value)))
        return value

    def _skip(self, kind: int) -> None:
        if kind == _STRING:
            length = self._read("Q")  # read before the offset it moves is added to
            self._offset += length
            self._check(self._offset)
        elif kind == _ARRAY:
            item, count = self._read("I"), self._read("Q")
            code = _SCALARS.get(item)
            if code is None:
                for _ in range(count):
                    self._skip(item)
            else:
                self._offset += count * struct.calcsize(code)
                self._check(self._offset)
        elif kind in _SCALARS:
            self._offset += struct.calcsize(_SCALARS[kind])
            self._check(self._offset)
        else:
            raise ValueError(f"unknown metadata value type {kind}")

