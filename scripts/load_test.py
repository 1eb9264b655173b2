#!/usr/bin/env python3
"""A bounded load test of engine-serve on loopback.

Starts `engine-serve` on 127.0.0.1 (or uses one already there, --url), sends a fixed number of
streamed completion requests at a fixed concurrency, and stops at a time limit whatever
happens. Reports throughput, time to first token, inter-token latency and end-to-end latency,
and the server's own counters from /metrics.

    python scripts/load_test.py --engine ENGINE_DIR --requests 128 --concurrency 16 \
        --max-tokens 64 --time-limit 300 [--prompt-words 8 64] [--device cpu] [--json out.json]

Only loopback addresses are accepted: this is a tool for measuring a server on this machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0
    prompt_tokens: int = 0


def prompts(n: int, seed: int, lo: int, hi: int) -> list[str]:
    """Deterministic English prompts of lo to hi words, from the Python docs' topic texts."""
    import pydoc_data.topics

    words = " ".join(pydoc_data.topics.topics.values()).split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        start = rng.randrange(len(words) - k)
        out.append(" ".join(words[start: start + k]))
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def one_request(client, url: str, model: str, prompt: str, args) -> Result:
    import httpx

    res = Result()
    body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "stream": True,
            "temperature": args.temperature, "ignore_eos": not args.allow_eos,
            "stream_options": {"include_usage": True}}
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.error = chunk["error"]["message"]
                    return res
                if chunk.get("usage"):
                    res.tokens = chunk["usage"]["completion_tokens"]
                    res.prompt_tokens = chunk["usage"]["prompt_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    now = time.perf_counter()
                    if res.ttft is None:
                        res.ttft = now - start
                    else:
                        res.itls.append(now - last)
                    last = now
        res.ok = True
    except (httpx.HTTPError, OSError) as e:
        res.error = f"{type(e).__name__}: {e}"
    res.e2e = time.perf_counter() - start
    return res


async def run_load(url: str, model: str, args) -> tuple[list[Result], float, bool]:
    import httpx

    texts = prompts(args.requests, args.seed, *args.prompt_words)
    queue: asyncio.Queue = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    results: list[Result] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async def worker(client):
        while not queue.empty():
            results.append(await one_request(client, url, model, queue.get_nowait(), args))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.time_limit, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(args.concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=args.time_limit)
        for t in pending:  # the time limit: stop whatever is still running
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return results, time.perf_counter() - start, bool(pending)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "kiln.runtime.serve", "--engine", args.engine, "--host",
           "127.0.0.1", "--port", str(port), "--device", args.device, "--log-level", "warning",
           "--max-queue-size", str(max(args.requests, 1))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: engine-serve exited: {proc.stderr.read().strip()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("error: engine-serve did not answer /health within 120 s")


def server_counters(url: str) -> dict:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name in ("kiln_generation_tokens_total", "kiln_prompt_tokens_total",
                          "kiln_time_to_first_token_seconds_count",
                          "kiln_time_to_first_token_seconds_sum", "kiln_kv_cache_usage_ratio",
                          "kiln_prefix_cache_hit_rate"):
                out[s.name] = s.value
    return out


def summarize(results: list[Result], wall: float, timed_out: bool, args) -> dict:
    ok = [r for r in results if r.ok]

    def ms(v):
        return None if v is None else round(v * 1000, 1)

    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [x for r in ok for x in r.itls]
    e2es = [r.e2e for r in ok]
    tokens = sum(r.tokens for r in ok)
    return {
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "completed": len(ok), "failed": len(results) - len(ok),
        "unfinished": args.requests - len(results), "hit_time_limit": timed_out,
        "wall_s": round(wall, 2), "requests_per_s": round(len(ok) / wall, 3),
        "output_tokens": tokens, "output_tokens_per_s": round(tokens / wall, 1),
        "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "ttft_ms": {"p50": ms(percentile(ttfts, 50)), "p90": ms(percentile(ttfts, 90)),
                    "p99": ms(percentile(ttfts, 99))},
        "itl_ms": {"p50": ms(percentile(itls, 50)), "p90": ms(percentile(itls, 90)),
                   "p99": ms(percentile(itls, 99)),
                   "mean": ms(statistics.fmean(itls) if itls else None)},
        "e2e_ms": {"p50": ms(percentile(e2es, 50)), "p99": ms(percentile(e2es, 99))},
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--engine", help="engine directory: start engine-serve on loopback for it")
    where.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model id (default: the server's first)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--allow-eos", action="store_true", help="let requests stop at the end id")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole run")
    p.add_argument("--prompt-words", type=int, nargs=2, default=(8, 64), metavar=("MIN", "MAX"),
                   help="prompt length range in words")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args()
    if not (1 <= args.requests <= 10_000 and 1 <= args.concurrency <= 1024 and args.max_tokens >= 1
            and 0 < args.time_limit <= 3600 and 1 <= args.prompt_words[0] <= args.prompt_words[1]):
        sys.exit("error: keep --requests in 1..10000, --concurrency in 1..1024, --max-tokens >= 1 "
                 "--time-limit in (0, 3600] and 1 <= --prompt-words MIN <= MAX")
    proc = None
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            sys.exit(f"error: {args.url} is not a loopback address; the load test only runs "
                     "against 127.0.0.1")
        url = args.url.rstrip("/")
    else:
        proc, url = start_server(args)
    try:
        import httpx

        model = args.model or httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        results, wall, timed_out = asyncio.run(run_load(url, model, args))
        summary = summarize(results, wall, timed_out, args) | {"server": server_counters(url)}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    sys.exit(0 if summary["failed"] == 0 and summary["unfinished"] == 0 else 1)


if __name__ == "__main__":
    main()
