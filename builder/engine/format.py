"""The rank file of an engine: magic, version, JSON header, then 256-byte-aligned blobs.

    "KILNENG\\0" | u32 version | u64 header length | header JSON | pad | blob | pad | blob ...

Blob offsets in the header are absolute file offsets, so the file can be mmap'd and each blob
viewed in place. Each blob carries a CRC-32 (8 hex digits, fixed width, so the header can be
rewritten in place once the blobs are written); the header's own CRC-32 lives in config.json.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kiln.builder.errors import KilnError
from kiln.builder.host import usable_cpus

MAGIC = b"KILNENG\0"
FORMAT_VERSION = 3  # 2: int4 linear_wo groups carry float offsets, not integer zero points;
# 3: a linear may add a residual (its last input; a plan GEMM's `residual`)
ALIGN = 256
PREAMBLE = struct.Struct("<8sIQ")  # magic, version, header length
REBUILD = "rebuild it with engine-build"
VERIFY_THREADS = 16  # the most threads verify_blobs checksums on


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(slots=True)
class RankFile:
    path: Path
    header: dict
    header_crc32: int
    buffer: mmap.mmap

    def blob(self, entry: dict) -> memoryview:
        return memoryview(self.buffer)[entry["offset"]: entry["offset"] + entry["nbytes"]]

    def verify_blobs(self, threads: int | None = None) -> None:
        """Checks every blob's CRC-32 against the header's, on `threads` threads (default: the
        CPUs this process may use, at most VERIFY_THREADS; zlib releases the GIL), largest blobs
        first; a mismatch names the first such blob in file order."""
        entries = [(name, entry) for section in ("weights", "blobs")
                   for name, entry in self.header.get(section, {}).items()]

        def intact(item: tuple[str, dict]) -> bool:
            return f"{zlib.crc32(self.blob(item[1])):08x}" == item[1]["crc32"]

        threads = min(threads or usable_cpus(), VERIFY_THREADS, max(len(entries), 1))
        if threads > 1:
            largest_first = sorted(range(len(entries)), key=lambda i: -entries[i][1]["nbytes"])
            with ThreadPoolExecutor(threads) as pool:
                done = dict(zip(largest_first, pool.map(intact, [entries[i] for i in largest_first])))
            checks = [done[i] for i in range(len(entries))]
        else:
            checks = map(intact, entries)
        for (name, _), ok in zip(entries, checks):
            if not ok:
                raise KilnError(f"{self.path}: checksum mismatch in {name}: the file is "
                                f"corrupted; {REBUILD}")


def write_preamble_and_header(f, header: dict) -> int:
    """Writes magic, version and header; returns the header's CRC-32."""
    data = json.dumps(header, separators=(",", ":")).encode()
    f.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(data)))
    f.write(data)
    f.write(b"\0" * (aligned(f.tell()) - f.tell()))
    return zlib.crc32(data)


def header_size(header: dict) -> int:
    return aligned(PREAMBLE.size + len(json.dumps(header, separators=(",", ":")).encode()))


def open_rank_file(path: Path, expected_size: int | None, expected_crc: int | None) -> RankFile:
    if not path.is_file():
        raise KilnError(f"{path} is missing: the engine directory is incomplete; {REBUILD}")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise KilnError(f"{path} is {size} bytes, expected {expected_size}: the file is "
                        f"truncated or altered; {REBUILD}")
    if size < PREAMBLE.size:
        raise KilnError(f"{path} is {size} bytes, too short for an engine file; {REBUILD}")
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    magic, version, length = PREAMBLE.unpack_from(buffer, 0)
    if magic != MAGIC:
        raise KilnError(f"{path}: expected magic {MAGIC!r}, found {magic!r}: not a Kiln engine file")
    if version != FORMAT_VERSION:
        raise KilnError(f"{path}: engine format version {version}, this Kiln reads version "
                        f"{FORMAT_VERSION}; {REBUILD}")
    if PREAMBLE.size + length > size:
        raise KilnError(f"{path}: header of {length} bytes runs past the end of the file "
                        f"({size} bytes); {REBUILD}")
    data = bytes(buffer[PREAMBLE.size: PREAMBLE.size + length])
    crc = zlib.crc32(data)
    if expected_crc is not None and crc != expected_crc:
        raise KilnError(f"{path}: header checksum {crc:#010x}, expected {expected_crc:#010x}: "
                        f"the file is corrupted; {REBUILD}")
    try:
        header = json.loads(data)
    except ValueError:
        raise KilnError(f"{path}: the header is not valid JSON; {REBUILD}") from None
    for section in ("weights", "blobs"):
        for name, entry in header.get(section, {}).items():
            if entry["offset"] + entry["nbytes"] > size:
                raise KilnError(f"{path}: {name} ends at byte {entry['offset'] + entry['nbytes']}"
                                f" past the file's {size} bytes; {REBUILD}")
    return RankFile(path, header, crc, buffer)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
