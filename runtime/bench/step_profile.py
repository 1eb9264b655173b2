"""A throughput run's own steps by kernel: `engine-bench throughput --profile-steps START:COUNT`.

The speed check times steps it builds itself. A run's steps differ: their batch grows and
shrinks, their sequences' blocks lie scattered over the cache, and the executor schedules each
step and streams every token it makes. This records the device's activity (CUPTI, through
torch's profiler) while the run's steps START to START + COUNT - 1 execute, and says per step:
the executor's wall time, the backend's share of it, how long the GPU was busy (kernels and
copies, overlaps counted once), each kernel's device time, and where the device idled: each gap
between one event's end and the next event's start, named by the two events around it, so a gap
between steps (the executor's own work, the inputs' upload, the previous step's wait) reads apart
from one inside a step (a launch the host issued late). A step's wall time well above its busy
time is time the GPU waited on the host.

The trace starts and stops with the executor held between two steps (Executor.pause), so the
window holds whole steps and nothing runs on the device while CUPTI attaches or flushes (a
process-wide synchronisation, which a CUDA graph's capture on the executor's thread would not
allow). The statistics are polled as tokens stream: the window opens at the first step boundary
after they show step START, and closes at the first after they show COUNT steps traced (a step
or two more at times), or at the run's end. The time held counts in the run's wall time
(the report gives it): take a run's throughput from a run without the profile.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from kiln.builder.errors import KilnError

# Kernels listed by name, longest first; the rest are summed in one line.
TOP_KERNELS = 12
# Idle gaps listed by the pair of events around them, longest in total first.
TOP_GAPS = 8


@dataclass(frozen=True, slots=True)
class Window:
    """Steps START .. START + COUNT - 1 of a run, counted from its first step (0)."""
    start: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Window":
        parts = text.split(":")
        try:
            start, count = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            start = count = None
        if start is None or start < 0 or count < 1:
            raise KilnError(f"--profile-steps takes START:COUNT, a step of the run (0 its first) and "
                            f"how many steps to profile from it (e.g. 100:10), got {text!r}")
        return cls(start, count)

    def describe(self) -> str:
        return f"{self.start}:{self.count}"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One kernel or copy on the device, in microseconds of the trace's clock."""
    name: str
    start_us: float
    end_us: float


def busy_us(events: list[DeviceEvent]) -> float:
    """How long the device ran anything: the union of the events' intervals."""
    total, reach = 0.0, float("-inf")
    for e in sorted(events, key=lambda e: e.start_us):
        if e.end_us <= reach:
            continue
        total += e.end_us - max(e.start_us, reach)
        reach = e.end_us
    return total


def by_name(events: list[DeviceEvent]) -> list[tuple[str, float, int]]:
    """Each name's device time (us) and launches over the events, longest first."""
    totals: dict[str, list] = {}
    for e in events:
        entry = totals.setdefault(e.name, [0.0, 0])
        entry[0] += e.end_us - e.start_us
        entry[1] += 1
    return sorted(((name, us, n) for name, (us, n) in totals.items()), key=lambda k: -k[1])


def idle_gaps(events: list[DeviceEvent]) -> list[tuple[str, str, float, int]]:
    """The device's idle time between the events, by the pair around each gap: (the event whose
    end the gap starts at, the event that ends it, us in total, gaps), longest first. A gap
    starts where everything before it has ended (overlapping events close no gap)."""
    totals: dict[tuple[str, str], list] = {}
    reach, last = float("-inf"), None
    for e in sorted(events, key=lambda e: e.start_us):
        if last is not None and e.start_us > reach:
            entry = totals.setdefault((last, e.name), [0.0, 0])
            entry[0] += e.start_us - reach
            entry[1] += 1
        if e.end_us > reach:
            reach, last = e.end_us, e.name
    return sorted(((a, b, us, n) for (a, b), (us, n) in totals.items()), key=lambda g: -g[2])


# PlanExecutor.host_times' parts of a step, in the order forward() runs them, and their names.
HOST_PARTS = ("prepare_us", "upload_us", "choose_us", "launch_us", "beside_us", "wait_us",
              "finish_us")
HOST_PART_NAMES = ("prepare", "upload", "GEMM choices", "launches", "the executor's beside them",
                   "wait", "copy out")


def host_times(backend) -> dict | None:
    """The GPU backend's host time by part of its steps so far (PlanExecutor.host_times); None
    for a backend that does not keep it."""
    times = getattr(backend, "host_times", None)
    return times() if times is not None else None


def host_delta(before: dict | None, after: dict | None) -> dict | None:
    """The host time by part between two host_times readings: per kind of step ("eager",
    "graph") that ran between them, its steps and each part's microseconds a step."""
    if before is None or after is None:
        return None
    out = {}
    for kind, now in after.items():
        steps = now["steps"] - before[kind]["steps"]
        if steps > 0:
            out[kind] = {"steps": steps} | {key: (now[key] - before[kind][key]) / steps
                                            for key in now if key != "steps"}
    return out


@dataclass(frozen=True, slots=True)
class StepProfile:
    """Per step of the window: what the executor measured and what the device ran."""
    window: str
    first_step: int  # of the run, 0 its first
    steps: int
    with_prompt: int
    prompt_tokens_mean: float
    decode_tokens_mean: float
    step_ms: float
    forward_ms: float
    busy_ms: float
    kernels: list[tuple[str, float, float]]  # (name, us a step, launches a step), longest first
    held_ms: float = 0.0  # the executor held for the trace's start and stop (run's wall time)
    # (event before, event after, us a step, gaps a step), longest first: where the device idled
    gaps: list[tuple[str, str, float, float]] = ()
    host: dict | None = None  # host_delta over the window, when the backend keeps host times

    def to_json(self) -> dict:
        return {"window": self.window, "first_step": self.first_step, "steps": self.steps,
                "with_prompt": self.with_prompt, "prompt_tokens_mean": self.prompt_tokens_mean,
                "decode_tokens_mean": self.decode_tokens_mean, "step_ms": self.step_ms,
                "forward_ms": self.forward_ms, "busy_ms": self.busy_ms, "held_ms": self.held_ms,
                "kernels": [{"name": n, "us": us, "launches": k} for n, us, k in self.kernels],
                "gaps": [{"before": a, "after": b, "us": us, "count": n} for a, b, us, n in self.gaps]} \
            | ({"host": self.host} if self.host else {})


def summarize(window: Window, first_step: int, before: dict, after: dict,
              events: list[DeviceEvent], held_ms: float = 0.0,
              host: dict | None = None) -> StepProfile:
    """The profile of the steps after `before` up to `after` (the executor's statistics at the
    trace's start and stop) from the device events recorded between them; `host`: the
    backend's host time by part over them (host_delta)."""
    steps = after["iteration"] - before["iteration"]
    if steps < 1:
        raise ValueError(f"a profile needs a step between iterations {before['iteration']} and "
                         f"{after['iteration']}")

    def per_step(key: str) -> float:
        return (after[key] - before[key]) / steps

    kernels = [(name, us / steps, n / steps) for name, us, n in by_name(events)]
    gaps = [(a, b, us / steps, n / steps) for a, b, us, n in idle_gaps(events)]
    return StepProfile(window.describe(), first_step, steps,
                       int(after["total_prefill_steps"] - before["total_prefill_steps"]),
                       per_step("total_computed_prompt_tokens"), per_step("total_decode_tokens"),
                       per_step("total_step_us") / 1e3, per_step("total_forward_us") / 1e3,
                       busy_us(events) / steps / 1e3, kernels, held_ms, gaps, host)


class TorchTrace:
    """The device's kernels and copies, through torch's profiler (CUPTI): every stream of the
    process, the executor's thread included."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CUDA])

    def start(self) -> None:
        self._profile.start()

    def stop(self) -> None:
        self._profile.stop()

    def events(self) -> list[DeviceEvent]:
        return [DeviceEvent(e.name, e.time_range.start, e.time_range.end)
                for e in self._profile.events() if e.device_type.name == "CUDA"]


class StepProfiler:
    """Follows a run's statistics; traces the device over the window's steps, starting and
    stopping the trace with the executor held between steps."""

    def __init__(self, window: Window, trace_factory=TorchTrace, backend=None) -> None:
        """`backend`: the runner's backend, whose host time by part (PlanExecutor.host_times)
        the profile reports over the window, when it keeps it."""
        self.window = window
        self._trace_factory = trace_factory
        self._backend = backend
        self._host_before: dict | None = None
        self._trace = None
        self._before: dict | None = None
        self._first_step = 0
        self._held_s = 0.0
        self.result: StepProfile | None = None
        self.steps_run = 0

    def observe(self, executor, stats: dict | None, run_first_iteration: int | None) -> None:
        """Called with the executor and its latest statistics as the run goes."""
        if stats is None or run_first_iteration is None or self.result is not None:
            return
        done = stats["iteration"] - run_first_iteration + 1  # the run's steps finished
        self.steps_run = max(self.steps_run, done)
        if self._trace is None:
            if done >= self.window.start:
                self._trace = self._trace_factory()
                with self._held(executor) as now:
                    self._before = now
                    self._first_step = now["iteration"] - run_first_iteration + 1
                    self.steps_run = max(self.steps_run, self._first_step)
                    self._host_before = host_times(self._backend)
                    self._trace.start()
        elif stats["iteration"] - self._before["iteration"] >= self.window.count:
            self._stop(executor)

    @contextmanager
    def _held(self, executor):
        """The executor held between two steps, its statistics as of the last step run; the
        time held counts in held_ms."""
        start = time.perf_counter()
        executor.pause()
        try:
            yield executor.get_latest_iteration_stats()
        finally:
            executor.resume()
            self._held_s += time.perf_counter() - start

    def finish(self, executor) -> None:
        """The run ended: a window still open closes at its last step."""
        if self._trace is not None and self.result is None:
            self._stop(executor)

    def _stop(self, executor) -> None:
        with self._held(executor) as now:
            self._trace.stop()
            host = host_delta(self._host_before, host_times(self._backend))
        self.steps_run = max(self.steps_run, self._first_step + now["iteration"] - self._before["iteration"])
        if now["iteration"] > self._before["iteration"]:
            self.result = summarize(self.window, self._first_step, self._before, now,
                                    self._trace.events(), 1e3 * self._held_s, host)

    def missed(self) -> str | None:
        """Why there is no profile, when the run ended before the window opened."""
        if self.result is not None:
            return None
        if self._trace is not None:
            return (f"no step profiled: the run ended with its step {self.steps_run - 1}, as "
                    f"--profile-steps {self.window.describe()} began")
        return (f"no step profiled: the run had {self.steps_run} steps and --profile-steps "
                f"{self.window.describe()} begins at step {self.window.start}")


def render_lines(p: dict) -> list[str]:
    """The report's lines for a run's profile (StepProfile.to_json)."""
    last = p["first_step"] + p["steps"] - 1
    kinds = f"{p['with_prompt']} with prompt tokens" if p["with_prompt"] else "all decode-only"
    busy = p["busy_ms"]
    lines = [f"  steps {p['first_step']}-{last} by kernel (--profile-steps {p['window']}; "
             f"{p['steps']} steps, {kinds}; {p['prompt_tokens_mean']:.0f} prompt and "
             f"{p['decode_tokens_mean']:.0f} decode tokens a step):",
             f"    a step {p['step_ms']:.2f} ms, the backend {p['forward_ms']:.2f}; the GPU busy "
             f"{busy:.2f} ms ({100 * busy / p['step_ms']:.1f}%), idle {p['step_ms'] - busy:.2f}"
             + (f"; the run held {p['held_ms']:.0f} ms for the trace" if p.get("held_ms") else "")]
    kernels = p["kernels"]
    total = sum(k["us"] for k in kernels)
    lines.append(f"    {total:>11.1f} us {sum(k['launches'] for k in kernels):>7.1f}x  "
                 "all kernels and copies (a step)")
    for k in kernels[:TOP_KERNELS]:
        lines.append(f"    {k['us']:>11.1f} us {k['launches']:>7.1f}x  {k['name'][:90]}")
    rest = kernels[TOP_KERNELS:]
    if rest:
        lines.append(f"    {sum(k['us'] for k in rest):>11.1f} us {sum(k['launches'] for k in rest):>7.1f}x"
                     f"  {len(rest)} others")
    lines += host_lines(p.get("host"), "    ")
    gaps = p.get("gaps") or []
    if gaps:
        idle = sum(g["us"] for g in gaps)
        lines.append(f"    {idle:>11.1f} us {sum(g['count'] for g in gaps):>7.1f}x  the device idle "
                     "between events (a step), by the events around each gap:")
        for g in gaps[:TOP_GAPS]:
            lines.append(f"    {g['us']:>11.1f} us {g['count']:>7.1f}x  {g['before'][:44]} -> "
                         f"{g['after'][:44]}")
        rest = gaps[TOP_GAPS:]
        if rest:
            lines.append(f"    {sum(g['us'] for g in rest):>11.1f} us {sum(g['count'] for g in rest):>7.1f}x"
                         f"  {len(rest)} other pairs")
    return lines


def host_lines(host: dict | None, indent: str) -> list[str]:
    """The report's lines for a host_delta: each kind of step's host time a step by part."""
    lines = []
    for kind, what in (("eager", "launch by launch"), ("graph", "as CUDA graphs")):
        t = (host or {}).get(kind)
        if t:
            parts = ", ".join(f"{name} {t[key]:,.0f}" for key, name in zip(HOST_PARTS, HOST_PART_NAMES))
            lines.append(f"{indent}host a step {what} ({t['steps']} steps), us: {parts}")
    return lines
