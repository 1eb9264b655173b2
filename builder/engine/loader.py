"""Loads and validates an engine directory."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln.builder.engine.format import FORMAT_VERSION, REBUILD, RankFile, open_rank_file
from kiln.builder.engine.writer import RANK_FILE
from kiln.builder.errors import KilnError
from kiln.builder.ir import Graph, torch_dtype
from kiln.builder.models.config import BuildConfig, ModelConfig


@dataclass(slots=True)
class EngineConfig:
    model: ModelConfig
    build: BuildConfig
    kiln_version: str

    @classmethod
    def read(cls, path: Path) -> tuple["EngineConfig", dict]:
        if not path.is_file():
            raise KilnError(f"{path} is missing: {path.parent} is not a Kiln engine directory "
                            f"(build one with engine-build)")
        try:
            data = json.loads(path.read_text())
        except ValueError:
            raise KilnError(f"{path} is not valid JSON: the engine is corrupted; {REBUILD}") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version is None and isinstance(data, dict) and "model_type" in data:
            raise KilnError(f"{path.parent} is a HuggingFace checkpoint, not a Kiln engine; build "
                            f"one from it with engine-build --checkpoint {path.parent}")
        if version != FORMAT_VERSION:
            raise KilnError(f"{path}: engine format version {version}, this Kiln reads version "
                            f"{FORMAT_VERSION}; {REBUILD}")
        try:
            config = cls(ModelConfig.from_json(data["model"]), BuildConfig.from_json(data["build"]),
                         data["kiln_version"])
        except (KeyError, TypeError) as e:
            raise KilnError(f"{path}: missing or malformed field ({e}); {REBUILD}") from None
        return config, data


@dataclass(slots=True)
class Engine:
    path: Path
    config: EngineConfig
    graph: Graph
    weights: dict[str, torch.Tensor]
    kernels: dict
    rank_file: RankFile

    @property
    def memory_plan(self) -> dict:
        return self.graph.memory_plan

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    def blob(self, key: str) -> memoryview:
        return self.rank_file.blob(self.rank_file.header["blobs"][key])


def load_engine(path: str | Path, verify: bool = True) -> Engine:
    """Opens an engine; `verify` also checks every blob's CRC-32 (reads the whole file)."""
    path = Path(path)
    if not path.is_dir():
        raise KilnError(f"engine directory {path} does not exist; build one with engine-build")
    config, raw = EngineConfig.read(path / "config.json")
    expected = raw.get("checksums", {}).get(RANK_FILE, {})
    crc = expected.get("header_crc32")
    rank = open_rank_file(path / RANK_FILE, expected.get("size"),
                          int(crc, 16) if crc is not None else None)
    if verify:
        rank.verify_blobs()
    graph = Graph.from_json(rank.header["graph"])
    weights = {}
    for name, entry in rank.header["weights"].items():
        dtype = torch_dtype(entry["dtype"])
        count = entry["nbytes"] // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(rank.buffer, dtype=dtype, count=count, offset=entry["offset"])
        weights[name] = flat.view(entry["shape"])
    return Engine(path, config, graph, weights, rank.header.get("kernels", {}), rank)
