"""Benchmark metrics from a timeline: when each request was sent and each of its tokens came.

Definitions (those of trtllm-bench and vLLM's benchmarks):
- time to first token (TTFT): first token's arrival - the request's arrival;
- inter-token latency (ITL): per request, (last token - first token) / (tokens - 1);
- end-to-end latency (E2E): last token's arrival - the request's arrival;
- throughput: counts over the run's duration, from its start to the last token of any request.
Percentiles interpolate linearly between the two nearest ranks (numpy's default).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestTiming:
    """One request's timeline, in seconds of one clock; a token time per output token."""
    arrival: float
    input_len: int
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.arrival

    @property
    def itl(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean and percentiles of a latency, in milliseconds."""
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of_seconds(cls, values: list[float]) -> "Distribution | None":
        if not values:
            return None
        ms = np.asarray(values, dtype=np.float64) * 1e3
        p50, p90, p99 = (float(np.percentile(ms, q)) for q in PERCENTILES)
        return cls(float(ms.mean()), p50, p90, p99)

    def to_json(self) -> dict:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99}


# The executor's own parts of a step (IterationStats' total_schedule_us ...): scheduling the step
# and building its inputs, the step before's responses published beside the backend's work, the
# step's output taken in.
EXECUTOR_PARTS = ("schedule", "beside", "update")


@dataclass(slots=True)
class StepLog:
    """The executor's per-step stats, as seen by polling its latest ones during a run. The
    running totals make the counts and times exact over the run's steps, whichever were seen:
    `start` takes the stats from before the run (None: the run's first step is the executor's)."""
    first_iteration: int | None = None
    last_iteration: int | None = None
    steps_seen: int = 0
    peak_batch: int = 0
    peak_running: int = 0
    peak_kv_blocks: int = 0
    preemptions_at_start: int | None = None
    preemptions: int = 0
    before: dict | None = None  # the totals before the run's first step
    last: dict | None = None

    def start(self, stats: dict | None) -> None:
        self.before = stats
        self.preemptions_at_start = stats["total_preemptions"] if stats else 0
        self.first_iteration = stats["iteration"] + 1 if stats else 0

    def observe(self, stats: dict | None) -> None:
        if stats is None or stats["iteration"] == self.last_iteration:
            return
        if self.before is not None and stats["iteration"] <= self.before["iteration"]:
            return  # a step from before the run
        if self.first_iteration is None:
            self.first_iteration = stats["iteration"]
            self.preemptions_at_start = stats["total_preemptions"]
        self.last_iteration = stats["iteration"]
        self.last = stats
        self.steps_seen += 1
        self.peak_batch = max(self.peak_batch, stats["num_scheduled_requests"])
        self.peak_running = max(self.peak_running, stats["num_running_requests"])
        self.peak_kv_blocks = max(self.peak_kv_blocks, stats["kv_used_blocks"])
        self.preemptions = stats["total_preemptions"] - self.preemptions_at_start

    @property
    def steps_total(self) -> int:
        if self.first_iteration is None or self.last_iteration is None:
            return 0
        return self.last_iteration - self.first_iteration + 1

    def _delta(self, key: str) -> float:
        return self.last[key] - (self.before[key] if self.before else 0)

    def timing(self) -> dict | None:
        """Where the run's step time went (None until a step is seen): steps that computed
        prompt tokens and decode-only steps, their count and mean wall time, and what a step of
        each computed on average: decode tokens and the keys they attended to (their context
        lengths summed); a prompt step's prompt tokens, sequences, the keys its prompt chunks
        read (their context lengths) and the (query, key) pairs they scored; tokens a step,
        the backend's share of the step time and the executor's own parts of a step (us)."""
        if self.last is None:
            return None
        if self.before is None and self.first_iteration != 0:
            return None  # the totals hold steps from before the run
        steps = self.steps_total
        prefill = int(self._delta("total_prefill_steps"))
        step_us, prefill_us = self._delta("total_step_us"), self._delta("total_prefill_step_us")
        decode_only = steps - prefill
        context = self._delta("total_decode_only_context_tokens")
        alone = self._delta("total_decode_tokens") - self._delta("total_prefill_step_decode_tokens")

        def per_prefill(key: str) -> float | None:
            return self._delta(key) / prefill if prefill else None

        return {
            "with_prompt": {"count": prefill,
                            "ms_mean": prefill_us / prefill / 1e3 if prefill else None,
                            "prompt_tokens_mean": per_prefill("total_computed_prompt_tokens"),
                            "decode_tokens_mean": per_prefill("total_prefill_step_decode_tokens"),
                            "decode_context_tokens_mean": per_prefill(
                                "total_prefill_step_decode_context_tokens"),
                            "sequences_mean": per_prefill("total_prefill_step_sequences"),
                            "prompt_context_tokens_mean": per_prefill(
                                "total_prefill_step_prompt_context_tokens"),
                            "prompt_attention_pairs_mean": per_prefill(
                                "total_prefill_step_prompt_attention_pairs")},
            "decode_only": {"count": decode_only,
                            "ms_mean": (step_us - prefill_us) / decode_only / 1e3 if decode_only else None,
                            "decode_tokens_mean": alone / decode_only if decode_only else None,
                            "context_tokens_mean": context / decode_only if decode_only else None},
            "decode_tokens_mean": self._delta("total_decode_tokens") / steps if steps else 0.0,
            "step_s": step_us / 1e6,
            "forward_share": self._delta("total_forward_us") / step_us if step_us > 0 else None,
        } | ({"executor_us": {part: self._delta(f"total_{part}_us") / steps for part in EXECUTOR_PARTS}}
             if steps and all(f"total_{part}_us" in self.last for part in EXECUTOR_PARTS) else {})


@dataclass(slots=True)
class RunMetrics:
    num_requests: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    total_output_tokens: int
    ttft_ms: Distribution
    itl_ms: Distribution | None
    e2e_ms: Distribution

    def to_json(self) -> dict:
        return {"num_requests": self.num_requests, "duration_s": self.duration_s,
                "requests_per_s": self.requests_per_s,
                "output_tokens_per_s": self.output_tokens_per_s,
                "total_tokens_per_s": self.total_tokens_per_s,
                "total_output_tokens": self.total_output_tokens,
                "ttft_ms": self.ttft_ms.to_json(),
                "itl_ms": self.itl_ms.to_json() if self.itl_ms else None,
                "e2e_ms": self.e2e_ms.to_json()}


def summarize(timings: list[RequestTiming], start: float) -> RunMetrics:
    """Throughput and latency of a finished run that began at `start`."""
    done = [t for t in timings if t.token_times]
    if len(done) != len(timings) or not done:
        raise ValueError("every request of a run must have produced tokens")
    end = max(t.token_times[-1] for t in done)
    duration = end - start
    if duration <= 0:
        raise ValueError(f"a run must take time; it began at {start} and ended at {end}")
    out_tokens = sum(len(t.token_times) for t in done)
    in_tokens = sum(t.input_len for t in done)
    itls = [t.itl for t in done if t.itl is not None]
    return RunMetrics(
        num_requests=len(done), duration_s=duration, requests_per_s=len(done) / duration,
        output_tokens_per_s=out_tokens / duration,
        total_tokens_per_s=(in_tokens + out_tokens) / duration, total_output_tokens=out_tokens,
        ttft_ms=Distribution.of_seconds([t.ttft for t in done]),
        itl_ms=Distribution.of_seconds(itls), e2e_ms=Distribution.of_seconds([t.e2e for t in done]))
