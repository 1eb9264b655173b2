"""engine-bench throughput --profile-steps: a run's own steps against the device's trace."""
from __future__ import annotations

import time

import jsonschema
import pytest

from kiln.builder.errors import KilnError
from kiln.runtime.bench.dataset import LengthDist, synthetic
from kiln.runtime.bench.step_profile import (DeviceEvent, StepProfiler, Window, busy_us, by_name,
                                             host_delta, host_lines, idle_gaps, render_lines,
                                             summarize)


def test_window_parses_start_and_count():
    assert Window.parse("100:10") == Window(100, 10)
    assert Window.parse("0:1").describe() == "0:1"
    for bad in ("5", "a:b", "-1:4", "3:0", "1:2:3", ""):
        with pytest.raises(KilnError, match=r"--profile-steps takes START:COUNT.*got '"):
            Window.parse(bad)


def test_busy_time_counts_overlaps_once():
    events = [DeviceEvent("a", 0, 10), DeviceEvent("b", 5, 12), DeviceEvent("c", 20, 25),
              DeviceEvent("d", 21, 22), DeviceEvent("e", 12, 14)]
    assert busy_us(events) == 14 + 5
    assert busy_us([]) == 0
    assert busy_us(list(reversed(events))) == 19


def test_idle_gaps_are_named_by_the_events_around_them():
    # a 0-10 overlapped by b 5-12; idle 12-20; c 20-25 with d inside it; idle 25-26; e 26-30;
    # idle 30-40 before a again; b's end (12) closes the first gap's left side, not a's.
    events = [DeviceEvent("a", 0, 10), DeviceEvent("b", 5, 12), DeviceEvent("c", 20, 25),
              DeviceEvent("d", 21, 22), DeviceEvent("e", 26, 30), DeviceEvent("a", 40, 41),
              DeviceEvent("b", 41, 42), DeviceEvent("c", 50, 51)]
    gaps = idle_gaps(list(reversed(events)))
    assert gaps == [("b", "c", 8 + 8, 2), ("e", "a", 10, 1), ("c", "e", 1, 1)]
    assert sum(g[2] for g in gaps) == 51 - busy_us(events)
    assert idle_gaps([]) == [] and idle_gaps(events[:1]) == []


def host_reading(eager_steps, graph_steps, scale):
    """A PlanExecutor.host_times reading: every part `scale` us a step so far, waits 100x."""
    def kind(steps):
        parts = {"prepare_us": 1, "upload_us": 2, "choose_us": 3, "launch_us": 4, "beside_us": 6,
                 "wait_us": 100, "finish_us": 5}
        return {"steps": steps} | {k: v * scale * steps for k, v in parts.items()}
    return {"eager": kind(eager_steps), "graph": kind(graph_steps)}


def test_host_times_are_taken_a_step_by_kind_between_readings():
    before, after = host_reading(3, 10, 2.0), host_reading(5, 10, 2.0)
    assert host_delta(before, after) == {"eager": {"steps": 2, "prepare_us": 2, "upload_us": 4,
                                                   "choose_us": 6, "launch_us": 8,
                                                   "beside_us": 12, "wait_us": 200,
                                                   "finish_us": 10}}
    assert host_delta(None, after) is None and host_delta(before, None) is None
    assert host_delta(after, after) == {}
    both = host_delta(host_reading(0, 0, 1.0), host_reading(4, 6, 1.0))
    lines = host_lines(both, "  ")
    assert lines == ["  host a step launch by launch (4 steps), us: prepare 1, upload 2, "
                     "GEMM choices 3, launches 4, the executor's beside them 6, wait 100, "
                     "copy out 5",
                     "  host a step as CUDA graphs (6 steps), us: prepare 1, upload 2, "
                     "GEMM choices 3, launches 4, the executor's beside them 6, wait 100, "
                     "copy out 5"]
    assert host_lines(None, "") == [] and host_lines({}, "") == []


class FakeHostBackend:
    """A backend keeping host times: each reading has two more steps launch by launch."""

    def __init__(self):
        self.readings = 0

    def host_times(self):
        self.readings += 1
        return host_reading(2 * self.readings, 0, 1.0)


def stats(iteration, steps_us, forward_us, prefill_steps=0, prompt=0, decode=0):
    return {"iteration": iteration, "total_step_us": steps_us, "total_forward_us": forward_us,
            "total_prefill_steps": prefill_steps, "total_computed_prompt_tokens": prompt,
            "total_decode_tokens": decode}


def test_summary_is_per_step_of_the_window():
    before = stats(9, 1_000, 900, prefill_steps=3, prompt=300, decode=50)
    after = stats(13, 41_000, 36_900, prefill_steps=4, prompt=400, decode=450)
    events = [DeviceEvent("gemm", 0, 6_000), DeviceEvent("gemm", 10_000, 16_000),
              DeviceEvent("attn", 16_000, 20_000), DeviceEvent("Memcpy HtoD", 19_000, 21_000)]
    p = summarize(Window(7, 4), 7, before, after, events)
    assert (p.steps, p.with_prompt, p.first_step) == (4, 1, 7)
    assert (p.prompt_tokens_mean, p.decode_tokens_mean) == (25, 100)
    assert (p.step_ms, p.forward_ms) == (10, 9)
    assert p.busy_ms == pytest.approx((6_000 + 11_000) / 4 / 1e3)
    assert p.kernels[0] == ("gemm", 3_000, 0.5) and p.kernels[1] == ("attn", 1_000, 0.25)
    lines = render_lines(p.to_json())
    assert lines[0].startswith("  steps 7-10 by kernel (--profile-steps 7:4; 4 steps, 1 with prompt")
    assert "a step 10.00 ms, the backend 9.00; the GPU busy 4.25 ms (42.5%), idle 5.75" in lines[1]
    assert "all kernels and copies" in lines[2] and "gemm" in lines[3]
    # idle 6,000-10,000 between the two GEMMs: 1,000 us a step of the window's four
    assert p.gaps == [("gemm", "gemm", 1_000, 0.25)]
    assert any("1000.0 us     0.2x  the device idle between events" in line for line in lines)
    assert lines[-1].strip() == "1000.0 us     0.2x  gemm -> gemm"
    with pytest.raises(ValueError, match="needs a step"):
        summarize(Window(7, 4), 7, before, before, events)


class FakeTrace:
    """Stands for CUPTI: counts its starts and stops and hands back fixed events. With
    `executor` set, each start and stop checks that no step runs meanwhile."""
    made = []
    executor = None

    def __init__(self):
        self.started = self.stopped = 0
        FakeTrace.made.append(self)

    def _check_held(self):
        if FakeTrace.executor is not None:
            before = FakeTrace.executor.get_latest_iteration_stats()
            time.sleep(0.05)  # a tiny model's step takes a few ms: held, none may end meanwhile
            assert FakeTrace.executor.get_latest_iteration_stats() == before

    def start(self):
        self._check_held()
        self.started += 1

    def stop(self):
        assert self.started == 1
        self._check_held()
        self.stopped += 1

    def events(self):
        return [DeviceEvent("k", 0, 100), DeviceEvent("k", 150, 250)]


@pytest.fixture(scope="module")
def runner(tiny_engine):
    from kiln.runtime import ModelRunner

    _, engine = tiny_engine("llama")
    with ModelRunner.from_dir(engine, device="cpu") as r:
        yield r


def test_a_run_is_traced_over_its_window(runner):
    """On the CPU backend, with the trace faked: the window opens after the run's step START,
    closes COUNT steps later, and its figures come from the executor's own statistics."""
    from kiln.runtime.bench.report import _RUN
    from kiln.runtime.bench.throughput import run_throughput

    FakeTrace.made.clear()
    FakeTrace.executor = runner.executor
    requests = synthetic(6, LengthDist(10, 3), LengthDist(20, 2), vocab_size=320, seed=3)
    backend = FakeHostBackend()
    profiler = StepProfiler(Window(3, 4), trace_factory=FakeTrace, backend=backend)
    try:
        run = run_throughput(runner, requests, profiler=profiler)
    finally:
        FakeTrace.executor = None
    [trace] = FakeTrace.made
    assert (trace.started, trace.stopped) == (1, 1)
    p = run.to_json()["profile"]
    jsonschema.validate(run.to_json(), _RUN)
    total = run.to_json()["steps"]["total"]
    # The statistics are polled as tokens stream, so the window may open a little late and
    # close a little after its COUNT steps, or at the run's end.
    assert p["first_step"] >= 3 and p["steps"] >= 1 and p["first_step"] + p["steps"] <= total
    assert p["steps"] >= 4 or p["first_step"] + p["steps"] == total
    assert p["held_ms"] >= 2 * 50  # each check above sleeps 50 ms with the executor held
    assert "the run held" in render_lines(p)[1]
    assert 0 < p["forward_ms"] <= p["step_ms"]
    assert p["kernels"] == [{"name": "k", "us": 200 / p["steps"], "launches": 2 / p["steps"]}]
    assert p["busy_ms"] == pytest.approx(0.2 / p["steps"])
    assert p["decode_tokens_mean"] > 0
    # The backend's host times over the window: read when the trace starts and stops.
    assert backend.readings == 2
    assert p["host"] == {"eager": {"steps": 2, "prepare_us": 1, "upload_us": 2, "choose_us": 3,
                                   "launch_us": 4, "beside_us": 6, "wait_us": 100,
                                   "finish_us": 5}}
    assert any(line.startswith("    host a step launch by launch (2 steps)") for line in render_lines(p))
    # The CPU backend keeps none: the run reports none. The executor's own parts of a step
    # are the executor's, on any backend.
    assert "host" not in run.to_json()
    parts = run.to_json()["steps"]["executor_us"]
    assert set(parts) == {"schedule", "beside", "update"} and all(v > 0 for v in parts.values())


def test_a_window_past_the_run_is_said_so(runner):
    from kiln.runtime.bench.throughput import run_throughput

    FakeTrace.made.clear()
    requests = synthetic(2, LengthDist(8), LengthDist(3), vocab_size=320, seed=4)
    run = run_throughput(runner, requests, profiler=StepProfiler(Window(500, 10), FakeTrace))
    assert FakeTrace.made == []
    missed = run.to_json()["profile"]["missed"]
    assert missed.startswith("no step profiled: the run had ")
    assert missed.endswith("steps and --profile-steps 500:10 begins at step 500")


def test_a_window_open_at_the_run_s_end_closes_there(runner):
    from kiln.runtime.bench.throughput import run_throughput

    FakeTrace.made.clear()
    requests = synthetic(2, LengthDist(8), LengthDist(6), vocab_size=320, seed=5)
    run = run_throughput(runner, requests, profiler=StepProfiler(Window(2, 1000), FakeTrace))
    [trace] = FakeTrace.made
    assert trace.stopped == 1
    p = run.to_json()["profile"]
    assert p["first_step"] + p["steps"] == run.to_json()["steps"]["total"]


def test_the_executor_holds_between_steps_and_resumes(runner):
    """Executor.pause on a run in flight: no step ends while held, the run finishes after, and
    the pause nests."""
    from kiln import _core

    submitted = [runner.router.submit(_core.Request(list(range(1, 9)), max_new_tokens=30, end_id=-1))
                 for _ in range(3)]
    while (runner.executor.get_latest_iteration_stats() or {}).get("iteration", -1) < 2:
        time.sleep(0.001)
    runner.executor.pause()
    runner.executor.pause()
    held = runner.executor.get_latest_iteration_stats()
    runner.executor.resume()
    time.sleep(0.05)
    assert runner.executor.get_latest_iteration_stats() == held
    runner.executor.resume()
    with pytest.raises(RuntimeError, match="resume"):
        runner.executor.resume()
    for _, q in submitted:
        final = q.get(timeout=60)
        assert final.is_final and not final.has_error and len(final.output_token_ids) == 30
    assert runner.executor.get_latest_iteration_stats()["iteration"] > held["iteration"]


def test_device_time_by_name_longest_first():
    events = [DeviceEvent("a", 0, 2), DeviceEvent("b", 2, 8), DeviceEvent("a", 8, 11)]
    assert by_name(events) == [("b", 6, 1), ("a", 5, 2)]
    assert by_name(events + [DeviceEvent("a", 11, 13)]) == [("a", 7, 3), ("b", 6, 1)]
    assert by_name([]) == []
