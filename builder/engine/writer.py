"""Writes an engine directory: config.json, rank0.engine, tokenizer/."""
from __future__ import annotations

import json
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kiln.builder.engine.format import (FORMAT_VERSION, aligned, header_size,
                                        write_preamble_and_header)
from kiln.builder.ir import Graph, torch_dtype

RANK_FILE = "rank0.engine"
IN_FLIGHT = 3  # weights being written or checksummed while the next one is made


@dataclass(slots=True)
class KernelBundle:
    """AOT-compiled kernels for the plan: JSON-able launch metadata and named binary blobs."""
    header: dict = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


def _layout(header: dict, sizes: dict[tuple[str, str], int]) -> None:
    """Assigns aligned absolute offsets after the header, growing until the header fits."""
    base = 0
    while True:
        offset = base
        for (section, name), nbytes in sizes.items():
            header[section][name]["offset"] = offset
            offset = aligned(offset + nbytes)
        need = header_size(header)
        if need <= base:
            return
        base = need


def write_rank_file(path: Path, graph: Graph, kernels: KernelBundle, dtype: str,
                    on_weight: Callable[[str, int], None] = lambda name, nbytes: None) -> tuple[int, int]:
    """Streams every weight of `graph` (one tensor in memory at a time) and the kernel blobs.

    Returns (file size, header CRC-32)."""
    weights = [n for n, v in graph.values.items() if v.kind == "weight"]
    header = {"format_version": FORMAT_VERSION, "graph": graph.to_json(),
              "kernels": kernels.header, "weights": {}, "blobs": {}}
    sizes: dict[tuple[str, str], int] = {}
    for name in weights:
        v = graph.values[name]
        nbytes = torch.Size(v.shape).numel() * torch.empty((), dtype=torch_dtype(v.dtype)).element_size()
        header["weights"][name] = {"offset": 0, "nbytes": nbytes, "dtype": v.dtype,
                                   "shape": list(v.shape), "crc32": "00000000"}
        sizes[("weights", name)] = nbytes
    for key, blob in kernels.blobs.items():
        header["blobs"][key] = {"offset": 0, "nbytes": len(blob), "crc32": "00000000"}
        sizes[("blobs", key)] = len(blob)
    _layout(header, sizes)

    with open(path, "wb") as f:
        write_preamble_and_header(f, header)
        _write_weights(f, graph, weights, header["weights"], on_weight)
        for key, blob in kernels.blobs.items():
            entry = header["blobs"][key]
            f.seek(entry["offset"])
            f.write(blob)
            entry["crc32"] = f"{zlib.crc32(blob):08x}"
        end = max([e["offset"] + e["nbytes"] for s in ("weights", "blobs")
                   for e in header[s].values()], default=header_size(header))
        f.seek(end)
        f.truncate(aligned(end))
        size = aligned(end)
        f.seek(0)
        crc = write_preamble_and_header(f, header)
    return size, crc


def _write_weights(f, graph: Graph, names: list[str], entries: dict,
                   on_weight: Callable[[str, int], None]) -> None:
    """Draws or reads each weight on this thread while one thread writes the previous ones
    (in file order) and two compute their CRC-32s (zlib and file writes release the GIL), so
    making, writing and checksumming 16 GB overlap instead of adding up. At most IN_FLIGHT
    tensors are held at once."""
    in_flight: deque = deque()

    def finish_oldest() -> None:
        name, written, crc = in_flight.popleft()
        written.result()
        entries[name]["crc32"] = f"{crc.result():08x}"
        on_weight(name, entries[name]["nbytes"])

    def write(offset: int, data) -> None:
        f.seek(offset)
        f.write(data)

    # On an error the pools finish what was queued before it propagates (their exit waits).
    with ThreadPoolExecutor(1) as writer, ThreadPoolExecutor(2) as checksums:
        for name in names:
            entry = entries[name]
            tensor = graph.sources[name].load(torch_dtype(entry["dtype"])).contiguous()
            if list(tensor.shape) != entry["shape"]:
                raise ValueError(f"{name}: source gave {list(tensor.shape)}, plan says {entry['shape']}")
            data = tensor.view(torch.uint8).reshape(-1).numpy()
            # The queued calls hold the array until they have run.
            in_flight.append((name, writer.submit(write, entry["offset"], data),
                              checksums.submit(zlib.crc32, data)))
            del tensor, data
            while len(in_flight) > IN_FLIGHT:
                finish_oldest()
        while in_flight:
            finish_oldest()


def write_config(path: Path, config: dict) -> None:
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
