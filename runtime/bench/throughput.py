"""Drives a dataset through a ModelRunner and records each request's timeline.

Requests arrive all at once, or at a request rate (Poisson arrivals), or are kept at a fixed
number in flight (concurrency); each is forced to its target length (no end id). Responses
stream, so each token is stamped when it reaches the caller, as a client would see it.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import numpy as np

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.bench.dataset import BenchRequest
from kiln.runtime.bench.metrics import RequestTiming, RunMetrics, StepLog, summarize
from kiln.runtime.bench.step_profile import host_delta, host_times

# A run with no response at all for this long has stalled: fail rather than hang.
STALL_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Load:
    """How requests arrive: `concurrency` caps those in flight, `request_rate` (per second)
    spaces arrivals as a Poisson process; neither means all at once."""
    concurrency: int | None = None
    request_rate: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise KilnError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise KilnError(f"--request-rate must be positive, got {self.request_rate}")

    def arrival_offsets(self, n: int) -> list[float]:
        if self.request_rate is None:
            return [0.0] * n
        gaps = np.random.default_rng(self.seed).exponential(1.0 / self.request_rate, n)
        return np.concatenate([[0.0], np.cumsum(gaps)[:-1]]).tolist()

    def describe(self) -> str:
        parts = []
        if self.request_rate is not None:
            parts.append(f"{self.request_rate:g} requests/s (Poisson)")
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        return ", ".join(parts) or "all at once"

    def to_json(self) -> dict:
        return {"description": self.describe(), "concurrency": self.concurrency,
                "request_rate": self.request_rate}


@dataclass(slots=True)
class ThroughputRun:
    load: Load
    metrics: RunMetrics
    timings: list[RequestTiming]
    steps: StepLog = field(default_factory=StepLog)
    kv_total_blocks: int = 0
    tokens_per_block: int = 0
    graphs: dict | None = None
    profile: dict | None = None  # step_profile.StepProfile.to_json, or {"missed": why}
    host: dict | None = None  # host_delta: the backend's host time by part over the run

    def to_json(self) -> dict:
        s = self.steps
        return {"load": self.load.to_json(), "metrics": self.metrics.to_json(),
                "peak_batch": s.peak_batch, "peak_running": s.peak_running,
                "preemptions": s.preemptions,
                "kv_cache": {"total_blocks": self.kv_total_blocks,
                             "peak_used_blocks": s.peak_kv_blocks,
                             "peak_fraction": s.peak_kv_blocks / max(self.kv_total_blocks, 1),
                             "tokens_per_block": self.tokens_per_block},
                "steps": {"seen": s.steps_seen, "total": s.steps_total} | (s.timing() or {}),
                "graphs": self.graphs} | ({"profile": self.profile} if self.profile else {}) \
            | ({"host": self.host} if self.host else {})


def graph_stats(backend) -> dict | None:
    """The GPU backend's CUDA graph counts (captured, replays, eager steps, capture seconds);
    None for a backend without graphs."""
    stats = getattr(backend, "graph_stats", None)
    return dict(stats()) if stats is not None else None


def graph_delta(before: dict | None, after: dict | None) -> dict | None:
    """What a run added to the backend's graph counts."""
    if before is None or after is None:
        return None
    return {key: after[key] - before[key] for key in after}


def make_request(r: BenchRequest) -> "_core.Request":
    """Greedy, streaming, and with no end id, so exactly `output_tokens` come back."""
    return _core.Request(r.input_ids, max_new_tokens=r.output_tokens,
                         sampling_config=_core.SamplingConfig(temperature=0.0), end_id=-1,
                         streaming=True)


def run_throughput(runner, requests: list[BenchRequest], load: Load = Load(),
                   clock=time.perf_counter, profiler=None) -> ThroughputRun:
    """`profiler`: a step_profile.StepProfiler, which traces the device over its window of the
    run's steps."""
    n = len(requests)
    offsets = load.arrival_offsets(n)
    cap = load.concurrency or n
    responses: queue.SimpleQueue = queue.SimpleQueue()
    timings: list[RequestTiming | None] = [None] * n
    index_of: dict[int, int] = {}
    log = StepLog()
    log.start(runner.executor.get_latest_iteration_stats())
    graphs_before = graph_stats(runner.backend)
    host_before = host_times(runner.backend)
    sent = finished = 0
    live: set[int] = set()
    start = clock()
    last_progress = start
    try:
        while finished < n:
            while sent < n and len(live) < cap and start + offsets[sent] <= clock():
                arrival = start + offsets[sent] if load.request_rate is not None else clock()
                rid, _ = runner.router.submit(make_request(requests[sent]), responses)
                index_of[rid] = sent
                timings[sent] = RequestTiming(arrival, requests[sent].input_len)
                live.add(rid)
                sent += 1
            wait = STALL_SECONDS
            if sent < n and len(live) < cap:
                wait = max(0.0, min(wait, start + offsets[sent] - clock()))
            try:
                batch = [responses.get(timeout=wait)]
            except queue.Empty:
                if clock() - last_progress >= STALL_SECONDS:
                    raise KilnError(f"no response for {STALL_SECONDS:.0f} s with {len(live)} "
                                    "requests in flight; the executor has stalled") from None
                continue
            now = last_progress = clock()
            while True:
                try:
                    batch.append(responses.get_nowait())
                except queue.Empty:
                    break
            for r in batch:
                finished += _record(r, now, requests, timings, index_of, live)
            stats = runner.executor.get_latest_iteration_stats()
            log.observe(stats)
            if profiler is not None:
                profiler.observe(runner.executor, stats, log.first_iteration)
    finally:
        for rid in live:  # an interrupted run must not leave requests running
            runner.router.cancel(rid)
        if profiler is not None:
            profiler.finish(runner.executor)
    kv = runner.executor.get_kv_cache_stats()
    profile = None
    if profiler is not None:
        profile = profiler.result.to_json() if profiler.result else {"missed": profiler.missed()}
    return ThroughputRun(load, summarize(timings, start), timings, log, kv["total_blocks"],
                         runner.engine.config.build.tokens_per_block,
                         graph_delta(graphs_before, graph_stats(runner.backend)), profile,
                         host_delta(host_before, host_times(runner.backend)))


def _record(r, now: float, requests, timings, index_of, live) -> int:
    i = index_of[r.request_id]
    timing = timings[i]
    timing.token_times.extend([now] * len(r.output_token_ids))
    if not r.is_final:
        return 0
    live.discard(r.request_id)
    if r.has_error:
        raise KilnError(f"request {requests[i].task_id} failed: {r.error_message}")
    if len(timing.token_times) != requests[i].output_tokens:
        raise KilnError(f"request {requests[i].task_id} ended after {len(timing.token_times)} of "
                        f"{requests[i].output_tokens} tokens ({r.finish_reason}); outputs must "
                        "reach their target length for the figures to mean anything")
    return 1


def warm_up(runner, requests: list[BenchRequest], count: int, vocab_size: int, seed: int) -> None:
    """Runs `count` requests shaped like the dataset's first ones, with other token ids (so no
    prompt of the timed run is already cached)."""
    if count <= 0:
        return
    rng = np.random.default_rng(seed + 1_000_003)
    shaped = [requests[i % len(requests)] for i in range(count)]
    warm = [BenchRequest(-1 - i, rng.integers(0, vocab_size, r.input_len).tolist(),
                         min(r.output_tokens, 16)) for i, r in enumerate(shaped)]
    run_throughput(runner, warm)
