"""engine-bench metric math on scripted timelines, arrivals, step stats and the roofline."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.builder.errors import KilnError
from kiln.runtime.bench.metrics import Distribution, RequestTiming, StepLog, summarize
from kiln.runtime.bench.roofline import (Bandwidth, Roofline, decode_bytes_per_token,
                                         graph_decode_bytes, measure_copy_bandwidth,
                                         weight_bytes)
from kiln.runtime.bench.throughput import Load

# Times are multiples of 1/8 s, exact in binary; only the percentile interpolation rounds.
TIMELINE = [
    RequestTiming(0.0, 5, [0.125, 0.25, 0.375, 0.5]),   # TTFT 125, ITL 125, E2E 500 ms
    RequestTiming(0.0, 6, [0.25, 0.5, 0.75]),           # TTFT 250, ITL 250, E2E 750
    RequestTiming(0.5, 7, [0.875, 1.125]),              # TTFT 375, ITL 250, E2E 625
    RequestTiming(1.0, 8, [1.5]),                       # TTFT 500, no ITL, E2E 500
]


def _close(got: Distribution, want: Distribution) -> bool:
    return got.to_json() == pytest.approx(want.to_json(), rel=1e-12, abs=0)


def test_per_request_latencies():
    t = TIMELINE[2]
    assert (t.ttft, t.itl, t.e2e) == (0.375, 0.25, 0.625)
    assert TIMELINE[3].itl is None


def test_run_metrics_on_a_scripted_timeline():
    m = summarize(TIMELINE, start=0.0)
    assert m.num_requests == 4 and m.duration_s == 1.5 and m.total_output_tokens == 10
    assert m.requests_per_s == 4 / 1.5
    assert m.output_tokens_per_s == 10 / 1.5
    assert m.total_tokens_per_s == (26 + 10) / 1.5
    # TTFT 125, 250, 375, 500: p90 sits 0.7 of the way from rank 3 to rank 4.
    assert _close(m.ttft_ms, Distribution(mean=312.5, p50=312.5, p90=462.5, p99=496.25))
    assert _close(m.itl_ms, Distribution(mean=625 / 3, p50=250.0, p90=250.0, p99=250.0))
    # E2E sorted 500, 500, 625, 750.
    assert _close(m.e2e_ms, Distribution(mean=593.75, p50=562.5, p90=712.5, p99=746.25))
    late = summarize(TIMELINE, start=-0.5)
    assert late.duration_s == 2.0 and late.requests_per_s == 2.0


def test_percentiles_match_linear_interpolation():
    values = list(np.random.default_rng(0).exponential(0.05, 1001))
    d = Distribution.of_seconds(values)
    ms = sorted(v * 1e3 for v in values)
    # 1001 values: p50, p90 and p99 land exactly on ranks 500, 900 and 990.
    assert (d.p50, d.p90, d.p99) == (ms[500], ms[900], ms[990])
    assert Distribution.of_seconds([]) is None


def test_summarize_refuses_unfinished_runs():
    with pytest.raises(ValueError, match="every request"):
        summarize([RequestTiming(0.0, 1, [])], start=0.0)


def _stats(iteration, scheduled, running, used, preemptions=0):
    return {"iteration": iteration, "num_scheduled_requests": scheduled,
            "num_running_requests": running, "kv_used_blocks": used,
            "total_preemptions": preemptions}


def test_step_log_peaks_and_coverage():
    log = StepLog()
    for s in [None, _stats(10, 4, 4, 12, 2), _stats(10, 4, 4, 12, 2), _stats(11, 8, 9, 30, 2),
              _stats(14, 6, 6, 41, 5), _stats(15, 2, 1, 7, 5)]:
        log.observe(s)
    assert (log.peak_batch, log.peak_running, log.peak_kv_blocks) == (8, 9, 41)
    assert (log.steps_seen, log.steps_total, log.preemptions) == (4, 6, 3)


def _timed(iteration, prefill_tokens, decode_tokens, step_us, forward_us, totals, keys=0,
           sequences=0, prompt_keys=0, pairs=0):
    """Stats of one step, with the executor's running totals updated in `totals`; `keys`: the
    keys its decodes attended to (their context lengths summed); a prompt step's `sequences`,
    `prompt_keys` (its chunks' context lengths summed) and the `pairs` they scored."""
    totals["total_step_us"] += step_us
    totals["total_forward_us"] += forward_us
    if "total_schedule_us" in totals:  # the executor's own parts: a tenth, a twentieth, a fifth
        for part, share in (("schedule", 0.1), ("beside", 0.05), ("update", 0.2)):
            totals[f"total_{part}_us"] += share * step_us
    totals["total_decode_tokens"] += decode_tokens
    totals["total_computed_prompt_tokens"] += prefill_tokens
    if prefill_tokens:
        totals["total_prefill_step_us"] += step_us
        totals["total_prefill_steps"] += 1
        totals["total_prefill_step_decode_tokens"] += decode_tokens
        totals["total_prefill_step_decode_context_tokens"] += keys
        totals["total_prefill_step_sequences"] += sequences
        totals["total_prefill_step_prompt_context_tokens"] += prompt_keys
        totals["total_prefill_step_prompt_attention_pairs"] += pairs
    else:
        totals["total_decode_only_context_tokens"] += keys
    return _stats(iteration, 4, 4, 10) | {"step_us": step_us, "forward_us": forward_us} | totals


def _zero_totals(executor_parts: bool = False) -> dict:
    """The executor's running totals before its first step (with its own parts of a step)."""
    keys = ["total_step_us", "total_forward_us", "total_decode_tokens",
            "total_computed_prompt_tokens", "total_prefill_step_us", "total_prefill_steps",
            "total_decode_only_context_tokens", "total_prefill_step_decode_tokens",
            "total_prefill_step_decode_context_tokens", "total_prefill_step_sequences",
            "total_prefill_step_prompt_context_tokens", "total_prefill_step_prompt_attention_pairs"]
    if executor_parts:
        keys += ["total_schedule_us", "total_beside_us", "total_update_us"]
    return dict.fromkeys(keys, 0)


def test_step_log_times_the_run_steps_only():
    totals = _zero_totals()
    warmup = _timed(0, 0, 2, 5000.0, 4000.0, totals, keys=70)  # before the run
    log = StepLog()
    log.start(dict(warmup))
    # A prompt of 64 tokens (64 x 65 / 2 pairs); then one of 16 (136) beside 4 decodes at 60 keys.
    steps = [_timed(1, 64, 0, 2000.0, 1900.0, totals, sequences=1, prompt_keys=64, pairs=2080),
             _timed(2, 16, 4, 1000.0, 900.0, totals, keys=4 * 60, sequences=5, prompt_keys=16,
                    pairs=136),
             _timed(3, 0, 4, 400.0, 300.0, totals, keys=100),
             _timed(4, 0, 4, 600.0, 500.0, totals, keys=104),
             _timed(5, 0, 3, 500.0, 400.0, totals, keys=81)]
    for i in (0, 2, 4):  # polling sees some steps only; the totals still count them all
        log.observe(dict(steps[i]))
    log.observe(dict(warmup))  # stale: from before the run
    t = log.timing()
    assert log.steps_total == 5 and log.steps_seen == 3
    assert t["with_prompt"] == {"count": 2, "ms_mean": 1.5, "prompt_tokens_mean": 40.0,
                                "decode_tokens_mean": 2.0, "decode_context_tokens_mean": 120.0,
                                "sequences_mean": 3.0, "prompt_context_tokens_mean": 40.0,
                                "prompt_attention_pairs_mean": (2080 + 136) / 2}
    assert t["decode_only"] == {"count": 3, "ms_mean": 0.5, "decode_tokens_mean": 11 / 3,
                                "context_tokens_mean": 95.0}
    assert t["decode_tokens_mean"] == pytest.approx(15 / 5)
    assert t["step_s"] == pytest.approx(4.5e-3)
    assert t["forward_share"] == pytest.approx(4000 / 4500)
    assert "executor_us" not in t  # stats without the executor's parts
    # Without the stats from before the run, totals that include earlier steps give nothing.
    blind = StepLog()
    blind.observe(dict(steps[4]))
    assert blind.timing() is None


def test_step_log_gives_the_executor_s_parts_a_step():
    from kiln.runtime.bench.report import _executor_line

    totals = _zero_totals(executor_parts=True)
    log = StepLog()
    log.start(dict(_timed(0, 0, 2, 9000.0, 8000.0, totals)))  # before the run: not counted
    for i, step_us in enumerate((1000.0, 3000.0), start=1):
        log.observe(dict(_timed(i, 0, 4, step_us, step_us / 2, totals, keys=40)))
    t = log.timing()
    assert t["executor_us"] == pytest.approx({"schedule": 200.0, "beside": 100.0, "update": 400.0})
    assert _executor_line(t) == ("  the executor a step, us: scheduling and inputs 200, the step "
                                 "before's responses beside the backend 100, the output taken in 400")
    assert _executor_line({}) is None


def test_arrivals():
    assert Load().arrival_offsets(3) == [0.0, 0.0, 0.0]
    offsets = Load(request_rate=20.0, seed=1).arrival_offsets(4000)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    gaps = np.diff(offsets)
    assert abs(gaps.mean() - 0.05) < 0.05 * 3 / np.sqrt(4000)  # exponential: stdev = mean
    assert Load(request_rate=20.0, seed=1).arrival_offsets(5) == offsets[:5]
    assert Load(concurrency=8).describe() == "concurrency 8"
    assert Load(concurrency=8, request_rate=2.5).describe() == "2.5 requests/s (Poisson), concurrency 8"
    with pytest.raises(KilnError, match="--concurrency must be at least 1"):
        Load(concurrency=0)
    with pytest.raises(KilnError, match="--request-rate must be positive"):
        Load(request_rate=0.0)


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "mixtral"])
def test_decode_bytes_per_token(tiny_engine, arch):
    from kiln.builder.engine import load_engine

    engine = load_engine(tiny_engine(arch)[1])
    total = weight_bytes(engine)
    assert total == sum(t.numel() * 4 for t in engine.weights.values())
    embed = engine.weights["embed.weight"]
    if arch == "llama":  # the table is only looked up: one row (64 floats) is read
        assert decode_bytes_per_token(engine) == total - embed.numel() * 4 + 64 * 4
    elif arch == "mixtral":  # a token reads 2 of the 4 experts of each layer
        experts = sum(t.numel() * 4 for name, t in engine.weights.items() if ".experts." in name)
        assert experts == 2 * 4 * 3 * 128 * 64 * 4
        assert decode_bytes_per_token(engine) == total - embed.numel() * 4 + 64 * 4 - experts // 2
        assert graph_decode_bytes(engine.graph, table_row_only=False) == total - experts // 2
    else:  # tied: the table is also the LM head, read whole
        assert decode_bytes_per_token(engine) == total


def test_roofline_math_and_cpu_bandwidth():
    r = Roofline(weight_bytes=2_000, bytes_per_token=1_000, bandwidth=Bandwidth(4e6, "test", 1))
    assert r.tokens_per_s == 4000.0 and r.fraction(1000.0) == 0.25
    assert r.to_json(1000.0)["fraction"] == 0.25 and r.to_json(None)["fraction"] is None
    # A decode-only step: the weights once, then 300 keys' K and V at 100 bytes a key.
    assert r.decode_step_s(100, 300.0) == (1_000 + 30_000) / 4e6
    bw = measure_copy_bandwidth("cpu", nbytes=16 << 20, iterations=2)
    assert bw.bytes_per_s > 1e8 and "host memcpy of 16 MiB" in bw.method and bw.buffer_bytes == 16 << 20
