"""Batch-1 latency: one request at a time, its time to first token and its decode speed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.builder.errors import KilnError
from kiln.runtime.bench.dataset import BenchRequest
from kiln.runtime.bench.metrics import Distribution, RequestTiming
from kiln.runtime.bench.throughput import run_throughput


@dataclass(slots=True)
class LatencyResult:
    input_len: int
    output_len: int
    iterations: int
    ttft_ms: Distribution
    e2e_ms: Distribution
    decode_tokens_per_s: float  # tokens after the first / the time they took, over all iterations

    @classmethod
    def of(cls, timings: list[RequestTiming], output_len: int) -> "LatencyResult":
        decode_time = sum(t.token_times[-1] - t.token_times[0] for t in timings)
        decode_tokens = sum(len(t.token_times) - 1 for t in timings)
        return cls(timings[0].input_len, output_len, len(timings),
                   Distribution.of_seconds([t.ttft for t in timings]),
                   Distribution.of_seconds([t.e2e for t in timings]),
                   decode_tokens / decode_time if decode_time > 0 else float("nan"))

    def to_json(self) -> dict:
        return {"input_len": self.input_len, "output_len": self.output_len,
                "iterations": self.iterations, "ttft_ms": self.ttft_ms.to_json(),
                "e2e_ms": self.e2e_ms.to_json(), "decode_tokens_per_s": self.decode_tokens_per_s}


def random_prompt(length: int, vocab_size: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab_size, length).tolist()


def run_latency(runner, prompt: list[int], output_len: int, iterations: int = 5,
                warmup: int = 1) -> LatencyResult:
    """Sends the prompt `warmup + iterations` times, one at a time; times the last ones.
    Prefix caching is the runner's choice: build it with enable_kv_cache_reuse=False to time
    the whole prefill every time."""
    if output_len < 2:
        raise KilnError(f"--output-len must be at least 2 to time decoding, got {output_len}")
    if iterations < 1:
        raise KilnError(f"--iterations must be at least 1, got {iterations}")
    request = BenchRequest(0, list(prompt), output_len)
    timings = []
    for i in range(warmup + iterations):
        run = run_throughput(runner, [request])
        if i >= warmup:
            timings.append(run.timings[0])
    return LatencyResult.of(timings, output_len)
