"""Prometheus metrics of one server: its own registry, so several apps in a process never mix."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Latency buckets in seconds: CPU test engines take milliseconds a step, large models on a GPU
# tens of milliseconds, and a first token behind a long queue can take seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _EngineCollector:
    """Gauges read at scrape time from the engine and the executor's latest step."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        e = self.engine
        kv = e.runner.kv_cache_stats()
        step = e.runner.iteration_stats() or {}
        yield GaugeMetricFamily("kiln_requests_in_flight", "Requests submitted to the executor "
                                "and not finished.", value=e.in_flight)
        yield GaugeMetricFamily("kiln_queue_depth", "Requests in flight beyond what the "
                                "executor batches (the queue that --max-queue-size bounds).",
                                value=e.queue_depth)
        yield GaugeMetricFamily("kiln_executor_waiting_requests", "Requests waiting in the "
                                "scheduler after the latest step.",
                                value=step.get("num_waiting_requests", 0))
        yield GaugeMetricFamily("kiln_executor_running_requests", "Requests running after the "
                                "latest step.", value=step.get("num_running_requests", 0))
        blocks = GaugeMetricFamily("kiln_kv_cache_blocks", "KV cache blocks by state.",
                                   labels=["state"])
        for state in ("total", "used", "free", "cached"):
            blocks.add_metric([state], kv[f"{state}_blocks"])
        yield blocks
        yield GaugeMetricFamily("kiln_kv_cache_usage_ratio", "Share of KV blocks in use.",
                                value=kv["used_blocks"] / max(kv["total_blocks"], 1))
        yield GaugeMetricFamily("kiln_prefix_cache_hit_rate", "Share of looked-up prompt "
                                "tokens served from the prefix cache.", value=kv["hit_rate"])
        yield CounterMetricFamily("kiln_executor_steps", "Executor steps run.",
                                  value=step["iteration"] + 1 if step else 0)
        yield CounterMetricFamily("kiln_executor_step_seconds", "Wall time of the executor's "
                                  "steps (scheduling, the model, sampling).",
                                  value=step.get("total_step_us", 0) / 1e6)
        yield CounterMetricFamily("kiln_executor_forward_seconds", "Of the steps' time, the "
                                  "model's forward (the rest is host work between forwards).",
                                  value=step.get("total_forward_us", 0) / 1e6)


class ServerMetrics:
    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("kiln_http_requests", "HTTP requests by path and status.",
                                     ["path", "status"], registry=r)
        self.finished = Counter("kiln_requests_finished", "Generation requests by finish reason.",
                                ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("kiln_prompt_tokens", "Prompt tokens admitted.", registry=r)
        self.generation_tokens = Counter("kiln_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram("kiln_time_to_first_token_seconds", "Time to first token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("kiln_inter_token_latency_seconds", "Time between output tokens.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("kiln_request_latency_seconds", "Time from arrival to last token.",
                             buckets=E2E_BUCKETS, registry=r)
        r.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatusCounter:
    """ASGI middleware counting responses by path and status, without wrapping the body (so
    streaming and disconnect detection are untouched)."""

    def __init__(self, app, metrics: ServerMetrics, routes: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = set(routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        path = scope["path"] if scope["path"] in self.routes else "other"  # bounded labels

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.http_requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
