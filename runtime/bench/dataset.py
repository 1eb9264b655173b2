"""Benchmark datasets: requests of token ids with a target output length, as JSON lines.

One line per request, as TensorRT-LLM's prepare_dataset.py writes them:
    {"task_id": 0, "input_ids": [..], "output_tokens": 128}
Lengths are fixed (stdev 0) or drawn from a normal distribution, rounded and clipped to >= 1.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from kiln.builder.errors import KilnError


@dataclass(slots=True)
class BenchRequest:
    task_id: int
    input_ids: list[int]
    output_tokens: int

    @property
    def input_len(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, slots=True)
class LengthDist:
    """Normally distributed lengths (fixed when stdev is 0), never below 1."""
    mean: float
    stdev: float = 0.0

    def __post_init__(self) -> None:
        if not self.mean >= 1:
            raise KilnError(f"a mean length must be at least 1, got {self.mean}")
        if not self.stdev >= 0:
            raise KilnError(f"a length stdev must be 0 or more, got {self.stdev}")

    def sample(self, n: int, rng: np.random.Generator) -> list[int]:
        if self.stdev == 0:
            return [int(round(self.mean))] * n
        drawn = np.rint(rng.normal(self.mean, self.stdev, n)).astype(np.int64)
        return np.maximum(drawn, 1).tolist()


@dataclass(frozen=True, slots=True)
class Summary:
    """mean, stdev (population), min and max of some numbers."""
    mean: float
    stdev: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "Summary":
        a = np.asarray(list(values), dtype=np.float64)
        if a.size == 0:
            return cls(0.0, 0.0, 0.0, 0.0)
        return cls(float(a.mean()), float(a.std()), float(a.min()), float(a.max()))

    def to_json(self) -> dict:
        return {"mean": self.mean, "stdev": self.stdev, "min": self.min, "max": self.max}


@dataclass(frozen=True, slots=True)
class DatasetStats:
    num_requests: int
    input_len: Summary
    output_len: Summary
    total_input_tokens: int
    total_output_tokens: int

    @classmethod
    def of(cls, requests: list[BenchRequest]) -> "DatasetStats":
        return cls(len(requests), Summary.of(r.input_len for r in requests),
                   Summary.of(r.output_tokens for r in requests),
                   sum(r.input_len for r in requests), sum(r.output_tokens for r in requests))

    def to_json(self) -> dict:
        return {"num_requests": self.num_requests, "input_len": self.input_len.to_json(),
                "output_len": self.output_len.to_json(),
                "total_input_tokens": self.total_input_tokens,
                "total_output_tokens": self.total_output_tokens}

    def describe(self) -> str:
        def one(s: Summary) -> str:
            return f"{s.mean:.1f} ± {s.stdev:.1f} [{s.min:.0f}..{s.max:.0f}]"
        return (f"{self.num_requests} requests · input {one(self.input_len)} · "
                f"output {one(self.output_len)}")


def synthetic(num_requests: int, inputs: LengthDist, outputs: LengthDist, vocab_size: int,
              seed: int = 0) -> list[BenchRequest]:
    """Random token ids, uniform over the vocabulary, with lengths from the distributions."""
    _check_count(num_requests)
    if vocab_size < 1:
        raise KilnError(f"vocab size must be positive, got {vocab_size}")
    rng = np.random.default_rng(seed)
    in_lens, out_lens = inputs.sample(num_requests, rng), outputs.sample(num_requests, rng)
    return [BenchRequest(i, rng.integers(0, vocab_size, n).tolist(), m)
            for i, (n, m) in enumerate(zip(in_lens, out_lens))]


def from_text(text: str, encode: Callable[[str], list[int]], num_requests: int,
              inputs: LengthDist, outputs: LengthDist, seed: int = 0) -> list[BenchRequest]:
    """Prompts cut from the tokenized text: each a window of the drawn length starting at a
    random place in the token stream (wrapping around), so the ids are real text's."""
    _check_count(num_requests)
    stream = encode(text)
    if not stream:
        raise KilnError("the text file gives no tokens; pass a file with some text in it")
    rng = np.random.default_rng(seed)
    in_lens, out_lens = inputs.sample(num_requests, rng), outputs.sample(num_requests, rng)
    starts = rng.integers(0, len(stream), num_requests)
    repeats = math.ceil((max(in_lens) + len(stream)) / len(stream))
    tiled = stream * repeats
    return [BenchRequest(i, tiled[s: s + n], m)
            for i, (s, n, m) in enumerate(zip(starts.tolist(), in_lens, out_lens))]


def from_lines(text: str, encode: Callable[[str], list[int]], num_requests: int,
               outputs: LengthDist, seed: int = 0) -> list[BenchRequest]:
    """One prompt per non-empty line (cycling through the lines), at its own length."""
    _check_count(num_requests)
    lines = [line for line in text.splitlines() if line.strip()]
    prompts = [ids for ids in (encode(line) for line in lines) if ids]
    if not prompts:
        raise KilnError("the text file has no non-empty lines; pass a file with one prompt a line")
    rng = np.random.default_rng(seed)
    out_lens = outputs.sample(num_requests, rng)
    return [BenchRequest(i, list(prompts[i % len(prompts)]), m) for i, m in enumerate(out_lens)]


def write_jsonl(path: str | Path, requests: list[BenchRequest]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in requests:
            f.write(json.dumps({"task_id": r.task_id, "input_ids": r.input_ids,
                                "output_tokens": r.output_tokens}) + "\n")


def read_jsonl(path: str | Path) -> list[BenchRequest]:
    path = Path(path)
    if not path.is_file():
        raise KilnError(f"dataset {path} does not exist; make one with `engine-bench prepare`")
    requests = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                requests.append(_parse(line, f"{path}:{number}", len(requests)))
    if not requests:
        raise KilnError(f"dataset {path} has no requests; make one with `engine-bench prepare`")
    return requests


def _parse(line: str, where: str, index: int) -> BenchRequest:
    try:
        row = json.loads(line)
        ids, n = row["input_ids"], row["output_tokens"]
    except (ValueError, KeyError, TypeError):
        raise KilnError(f"{where} is not a JSON object with input_ids and output_tokens; "
                        "make the dataset with `engine-bench prepare`") from None
    if (not isinstance(ids, list) or not ids or not all(type(t) is int and t >= 0 for t in ids)
            or type(n) is not int or n < 1):
        raise KilnError(f"{where}: input_ids must be a non-empty list of token ids and "
                        "output_tokens a positive integer")
    return BenchRequest(int(row.get("task_id", index)), ids, n)


def check_fits(requests: list[BenchRequest], max_seq_len: int, vocab_size: int) -> None:
    """Refuse a dataset the engine cannot run, before any time is spent."""
    for r in requests:
        if r.input_len + r.output_tokens > max_seq_len:
            raise KilnError(f"request {r.task_id} needs {r.input_len} + {r.output_tokens} tokens, "
                            f"more than the engine's max_seq_len {max_seq_len}; rebuild with a "
                            "larger --max-seq-len or prepare shorter requests")
        top = max(r.input_ids)
        if top >= vocab_size:
            raise KilnError(f"request {r.task_id} has token id {top}, outside the engine's "
                            f"vocabulary of {vocab_size}; prepare the dataset for this engine")


def _check_count(n: int) -> None:
    if n < 1:
        raise KilnError(f"--num-requests must be at least 1, got {n}")
