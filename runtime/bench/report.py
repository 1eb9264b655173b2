"""engine-bench's report: one JSON document (schema below), a human table, and a plot."""
from __future__ import annotations

import datetime
import importlib.metadata
import platform

import torch

from kiln.runtime.bench.metrics import EXECUTOR_PARTS
from kiln.runtime.bench.step_profile import HOST_PARTS, host_lines
from kiln.runtime.bench.step_profile import render_lines as profile_lines

SCHEMA_ID = "kiln-engine-bench/1"

_DIST = {"type": "object", "required": ["mean", "p50", "p90", "p99"],
         "properties": {k: {"type": "number"} for k in ("mean", "p50", "p90", "p99")}}
_METRICS = {
    "type": "object",
    "required": ["num_requests", "duration_s", "requests_per_s", "output_tokens_per_s",
                 "total_tokens_per_s", "total_output_tokens", "ttft_ms", "itl_ms", "e2e_ms"],
    "properties": {"num_requests": {"type": "integer", "minimum": 1},
                   "duration_s": {"type": "number", "exclusiveMinimum": 0},
                   "requests_per_s": {"type": "number"}, "output_tokens_per_s": {"type": "number"},
                   "total_tokens_per_s": {"type": "number"},
                   "total_output_tokens": {"type": "integer"}, "ttft_ms": _DIST,
                   "itl_ms": {"oneOf": [_DIST, {"type": "null"}]}, "e2e_ms": _DIST},
}
_LATENCY = {"type": "object",
            "required": ["input_len", "output_len", "iterations", "ttft_ms", "e2e_ms",
                         "decode_tokens_per_s"],
            "properties": {"input_len": {"type": "integer"}, "output_len": {"type": "integer"},
                           "iterations": {"type": "integer"}, "ttft_ms": _DIST, "e2e_ms": _DIST,
                           "decode_tokens_per_s": {"type": "number"}}}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STEP_KIND = {"type": "object", "required": ["count"],
              "properties": {"count": {"type": "integer"},
                             "ms_mean": _NUM_OR_NULL, "prompt_tokens_mean": _NUM_OR_NULL,
                             "decode_tokens_mean": _NUM_OR_NULL,
                             "decode_context_tokens_mean": _NUM_OR_NULL,
                             "sequences_mean": _NUM_OR_NULL,
                             "prompt_context_tokens_mean": _NUM_OR_NULL,
                             "prompt_attention_pairs_mean": _NUM_OR_NULL,
                             "context_tokens_mean": _NUM_OR_NULL,
                             "memory_floor_ms": _NUM_OR_NULL, "tflop_mean": _NUM_OR_NULL,
                             "floor_ms": _NUM_OR_NULL,
                             "floor_parts": {"type": "object", "additionalProperties": {
                                 "type": "object", "required": ["ms", "bound"],
                                 "properties": {"ms": {"type": "number"},
                                                "bound": {"enum": ["compute", "memory"]}}}}}}
_MATMUL = {"oneOf": [{"type": "null"},
                     {"type": "object", "required": ["flops_per_s", "dtype", "method"],
                      "properties": {"flops_per_s": {"type": "number"}, "dtype": {"type": "string"},
                                     "method": {"type": "string"}}}]}
_HOST_KIND = {"type": "object", "required": ["steps", *HOST_PARTS],
              "properties": {"steps": {"type": "integer", "minimum": 1}}
              | {part: {"type": "number"} for part in HOST_PARTS}}
_HOST = {"type": "object", "properties": {"eager": _HOST_KIND, "graph": _HOST_KIND},
         "additionalProperties": False}
_PROFILE = {"oneOf": [
    {"type": "object", "required": ["missed"], "properties": {"missed": {"type": "string"}}},
    {"type": "object",
     "required": ["window", "first_step", "steps", "with_prompt", "prompt_tokens_mean",
                  "decode_tokens_mean", "step_ms", "forward_ms", "busy_ms", "kernels"],
     "properties": {"window": {"type": "string"}, "first_step": {"type": "integer", "minimum": 0},
                    "steps": {"type": "integer", "minimum": 1},
                    "with_prompt": {"type": "integer", "minimum": 0},
                    "prompt_tokens_mean": {"type": "number"}, "decode_tokens_mean": {"type": "number"},
                    "step_ms": {"type": "number"}, "forward_ms": {"type": "number"},
                    "busy_ms": {"type": "number", "minimum": 0},
                    "held_ms": {"type": "number", "minimum": 0},
                    "host": _HOST,
                    "kernels": {"type": "array", "items": {
                        "type": "object", "required": ["name", "us", "launches"],
                        "properties": {"name": {"type": "string"}, "us": {"type": "number"},
                                       "launches": {"type": "number"}}}},
                    "gaps": {"type": "array", "items": {
                        "type": "object", "required": ["before", "after", "us", "count"],
                        "properties": {"before": {"type": "string"}, "after": {"type": "string"},
                                       "us": {"type": "number", "minimum": 0},
                                       "count": {"type": "number", "minimum": 0}}}}}}]}
_RUN = {"type": "object",
        "required": ["load", "metrics", "peak_batch", "peak_running", "preemptions", "kv_cache", "steps"],
        "properties": {
            "load": {"type": "object", "required": ["description", "concurrency", "request_rate"],
                     "properties": {"description": {"type": "string"},
                                    "concurrency": {"type": ["integer", "null"]},
                                    "request_rate": _NUM_OR_NULL}},
            "metrics": _METRICS, "peak_batch": {"type": "integer"},
            "peak_running": {"type": "integer"}, "preemptions": {"type": "integer"},
            "kv_cache": {"type": "object",
                         "required": ["total_blocks", "peak_used_blocks", "peak_fraction",
                                      "tokens_per_block"],
                         "properties": {"total_blocks": {"type": "integer"},
                                        "peak_used_blocks": {"type": "integer"},
                                        "peak_fraction": {"type": "number", "minimum": 0, "maximum": 1},
                                        "tokens_per_block": {"type": "integer"}}},
            "steps": {"type": "object", "required": ["seen", "total"],
                      "properties": {"seen": {"type": "integer"}, "total": {"type": "integer"},
                                     "with_prompt": _STEP_KIND, "decode_only": _STEP_KIND,
                                     "decode_tokens_mean": {"type": "number"},
                                     "step_s": {"type": "number"},
                                     "forward_share": _NUM_OR_NULL,
                                     "executor_us": {"type": "object", "required": list(EXECUTOR_PARTS),
                                                     "properties": {p: {"type": "number"}
                                                                    for p in EXECUTOR_PARTS}}}},
            "graphs": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["captured", "replays", "eager_steps", "capture_s"],
                "properties": {"captured": {"type": "integer", "minimum": 0},
                               "replays": {"type": "integer", "minimum": 0},
                               "eager_steps": {"type": "integer", "minimum": 0},
                               "capture_s": {"type": "number", "minimum": 0}}}]},
            "profile": _PROFILE,
            "host": _HOST}}
_SUMMARY = {"type": "object", "required": ["mean", "stdev", "min", "max"],
            "properties": {k: {"type": "number"} for k in ("mean", "stdev", "min", "max")}}
_RATIO = {"oneOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}]}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "command", "date", "env", "engine", "roofline"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "command": {"enum": ["throughput", "latency"]},
        "date": {"type": "string"},
        "env": {"type": "object",
                "required": ["device", "device_name", "kiln", "torch", "transformers", "cuda", "python"],
                "properties": {k: {"type": ["string", "null"]} for k in
                               ("device", "device_name", "kiln", "torch", "transformers", "cuda", "python")}},
        "engine": {"type": "object",
                   "required": ["path", "architecture", "num_params", "dtype", "max_batch_size",
                                "max_num_tokens", "max_seq_len"],
                   "properties": {"path": {"type": "string"}, "architecture": {"type": "string"},
                                  "num_params": {"type": "integer"}, "dtype": {"type": "string"},
                                  "max_batch_size": {"type": "integer"},
                                  "max_num_tokens": {"type": "integer"},
                                  "max_seq_len": {"type": "integer"}}},
        "runtime": {"type": "object",
                    "required": ["max_batch_size", "max_num_tokens",
                                 "kv_cache_free_gpu_memory_fraction", "capacity_scheduler_policy",
                                 "kv_cache_reuse"],
                    "properties": {"max_batch_size": {"type": "integer", "minimum": 1},
                                   "max_num_tokens": {"type": "integer", "minimum": 1},
                                   "kv_cache_free_gpu_memory_fraction": {"type": "number"},
                                   "capacity_scheduler_policy": {
                                       "enum": ["max_utilization", "guaranteed_no_evict"]},
                                   "kv_cache_reuse": {"type": "boolean"},
                                   "fp8_fast_accumulation": {"type": "boolean"},
                                   "kernels_from_rows": {"type": ["integer", "null"],
                                                         "minimum": 0}}},
        "dataset": {"type": "object",
                    "required": ["num_requests", "input_len", "output_len", "total_input_tokens",
                                 "total_output_tokens"],
                    "properties": {"num_requests": {"type": "integer"}, "input_len": _SUMMARY,
                                   "output_len": _SUMMARY, "total_input_tokens": {"type": "integer"},
                                   "total_output_tokens": {"type": "integer"}}},
        "runs": {"type": "array", "minItems": 1, "items": _RUN},
        "baseline": {"oneOf": [{"type": "null"}, {
            "type": "object",
            "required": ["name", "num_requests", "batch_size", "weights", "method", "metrics", "ratio"],
            "properties": {"name": {"const": "hf"}, "num_requests": {"type": "integer"},
                           "batch_size": {"type": "integer"}, "weights": {"type": "string"},
                           "method": {"type": "string"}, "metrics": _METRICS, "ratio": _RATIO}}]},
        "latency": {"type": "object", "required": ["kiln", "hf", "ratio"],
                    "properties": {"kiln": _LATENCY, "hf": {"oneOf": [_LATENCY, {"type": "null"}]},
                                   "ratio": _RATIO}},
        "roofline": {"type": "object",
                     "required": ["weight_bytes", "bytes_per_token", "bandwidth", "tokens_per_s",
                                  "kiln_tokens_per_s", "fraction"],
                     "properties": {"weight_bytes": {"type": "integer"},
                                    "bytes_per_token": {"type": "integer"},
                                    "bandwidth": {"type": "object",
                                                  "required": ["bytes_per_s", "method", "buffer_bytes"]},
                                    "tokens_per_s": {"type": "number"},
                                    "kiln_tokens_per_s": _NUM_OR_NULL, "fraction": _NUM_OR_NULL}},
        "matmul_rate": _MATMUL,
    },
    "allOf": [{"if": {"properties": {"command": {"const": "throughput"}}},
               "then": {"required": ["dataset", "runs", "baseline"]},
               "else": {"required": ["latency"]}}],
}


def environment(device: str) -> dict:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or
                                                                  platform.machine())
    return {"device": device, "device_name": name, "kiln": version("kiln"),
            "torch": torch.__version__, "transformers": version("transformers"),
            "cuda": torch.version.cuda if device == "cuda" else None,
            "python": platform.python_version()}


def engine_info(engine) -> dict:
    m, b = engine.config.model, engine.config.build
    return {"path": str(engine.path), "architecture": m.architecture, "num_params": m.num_params(),
            "dtype": b.dtype, "max_batch_size": b.max_batch_size,
            "max_num_tokens": b.max_num_tokens, "max_seq_len": b.max_seq_len}


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ratios(kiln: dict, hf: dict, keys: tuple[str, ...]) -> dict:
    return {k: kiln[k] / hf[k] for k in keys if hf.get(k)}


def si(value: float, unit: str) -> str:
    """1.23e9 -> '1.23 G<unit>' (decimal prefixes, as bandwidths are quoted)."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


# -- the human table ----------------------------------------------------------------------

def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _header(doc: dict) -> list[str]:
    env, eng = doc["env"], doc["engine"]
    versions = f"kiln {env['kiln']} · torch {env['torch']} · transformers {env['transformers']}"
    if env["cuda"]:
        versions += f" · CUDA {env['cuda']}"
    return [f"engine-bench {doc['command']} · {doc['date']}",
            f"device   {env['device']}: {env['device_name']} · {versions}",
            f"engine   {eng['path']}: {eng['architecture']}, {_params(eng['num_params'])} params, "
            f"{eng['dtype']}, max batch {eng['max_batch_size']}, max tokens {eng['max_num_tokens']}, "
            f"max seq {eng['max_seq_len']}"]


def _latency_rows(metrics: dict, indent: str = "  ") -> list[str]:
    rows = [f"{indent}{'':<9}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}"]
    for key, label in (("ttft_ms", "TTFT ms"), ("itl_ms", "ITL ms"), ("e2e_ms", "E2E ms")):
        d = metrics.get(key)
        if d:
            rows.append(f"{indent}{label:<9}" + "".join(f"{d[q]:>10.2f}" for q in ("mean", "p50", "p90", "p99")))
    return rows


def _throughput_line(m: dict) -> str:
    return (f"  {m['num_requests']} requests in {m['duration_s']:.2f} s: "
            f"{m['requests_per_s']:.2f} req/s, {m['output_tokens_per_s']:.1f} output tok/s, "
            f"{m['total_tokens_per_s']:.1f} total tok/s")


def _runtime_line(r: dict) -> str:
    """The limits the run had, which may be below the engine's (`--max-batch-size`, ...)."""
    return (f"runtime  max batch {r['max_batch_size']}, max tokens {r['max_num_tokens']} · KV cache "
            f"{r['kv_cache_free_gpu_memory_fraction']:g} of free memory · "
            f"{r['capacity_scheduler_policy']} · prefix caching "
            f"{'on' if r['kv_cache_reuse'] else 'off'}"
            + (" · FP8 fast accumulation" if r.get("fp8_fast_accumulation") else "")
            + _kernels_from(r.get("kernels_from_rows")))


def _kernels_from(rows: int | None) -> str:
    """The runtime line's word on --kernels-from-rows (None: the engine's preferences)."""
    if rows is None:
        return ""
    return f" · Kiln's GEMM kernels from {rows} rows" if rows else " · every GEMM choice timed"


def _dataset_line(d: dict) -> str:
    def one(s: dict) -> str:
        return f"{s['mean']:.1f} ± {s['stdev']:.1f} [{s['min']:.0f}..{s['max']:.0f}]"
    return (f"dataset  {d['num_requests']} requests · input {one(d['input_len'])} · "
            f"output {one(d['output_len'])}")


def _roofline_lines(r: dict) -> list[str]:
    line = (f"roofline (batch-1 decode): {si(r['bytes_per_token'], 'B')} read per token / "
            f"{si(r['bandwidth']['bytes_per_s'], 'B/s')} = {r['tokens_per_s']:.1f} tok/s")
    if r["kiln_tokens_per_s"] is not None:
        line += f"; Kiln {r['kiln_tokens_per_s']:.1f} tok/s = {100 * r['fraction']:.1f}% of it"
    return [line, f"  bandwidth: {r['bandwidth']['method']}",
            f"  weights: {si(r['weight_bytes'], 'B')} in the engine, {si(r['bytes_per_token'], 'B')} "
            "read per decode token (a table only looked up by the embedding adds one row; KV "
            "cache reads are not counted)"]


def _steps_line(steps: dict) -> str:
    """Where the step time went: steps with prompt tokens against decode-only ones."""
    def kind(k: dict, what: str) -> str:
        if not k["count"]:
            return f"0 {what}"
        tokens = f", {k['prompt_tokens_mean']:.0f} prompt tokens" if k.get("prompt_tokens_mean") else ""
        return f"{k['count']} {what} ({k['ms_mean']:.2f} ms each{tokens})"
    share = steps["forward_share"]
    return (f"  steps {steps['step_s']:.2f} s: {kind(steps['with_prompt'], 'with prompt tokens')}, "
            f"{kind(steps['decode_only'], 'decode-only')}; {steps['decode_tokens_mean']:.1f} decode "
            f"tokens a step" + (f"; the backend {100 * share:.1f}% of it" if share is not None else ""))


def _executor_line(steps: dict) -> str | None:
    """The executor's own parts of a step (StepLog.timing's executor_us), when reported."""
    parts = steps.get("executor_us")
    if not parts:
        return None
    return (f"  the executor a step, us: scheduling and inputs {parts['schedule']:,.0f}, the step "
            f"before's responses beside the backend {parts['beside']:,.0f}, the output taken in "
            f"{parts['update']:,.0f}")


def _floor_line(d: dict) -> str:
    """A decode-only step's mean time against its memory floor (Roofline.decode_step_s)."""
    return (f"  decode-only steps attend to {d['context_tokens_mean']:,.0f} keys a step: the "
            f"weights and their KV read once take {d['memory_floor_ms']:.2f} ms at the copy "
            f"bandwidth, {100 * d['memory_floor_ms'] / d['ms_mean']:.1f}% of the "
            f"{d['ms_mean']:.2f} ms they took")


def _step_floor_line(k: dict, what: str) -> str:
    """A kind of step's mean time against its floor (compute.set_step_floors), part by part."""
    names = {"gemms": "GEMMs", "decode_attention": "decode attention",
             "prompt_attention": "prompt attention"}
    parts = ", ".join(f"{names[name]} {p['ms']:.2f} ms {p['bound']}-bound"
                      for name, p in k["floor_parts"].items())
    return (f"  {what}: {si(k['tflop_mean'] * 1e12, 'FLOP')} a step; floor {k['floor_ms']:.2f} ms "
            f"({parts}), {100 * k['floor_ms'] / k['ms_mean']:.1f}% of the {k['ms_mean']:.2f} ms "
            "they took")


def render(doc: dict) -> str:
    lines = _header(doc)
    if doc["command"] == "throughput":
        if doc.get("runtime"):
            lines.append(_runtime_line(doc["runtime"]))
        lines.append(_dataset_line(doc["dataset"]))
        for run in doc["runs"]:
            kv, steps = run["kv_cache"], run["steps"]
            lines += ["", f"Kiln — {run['load']['description']}", _throughput_line(run["metrics"]),
                      f"  peak batch {run['peak_batch']} · KV cache peak {kv['peak_used_blocks']}/"
                      f"{kv['total_blocks']} blocks ({100 * kv['peak_fraction']:.1f}%, "
                      f"{kv['tokens_per_block']} tokens each) · preemptions {run['preemptions']} · "
                      f"stats seen on {steps['seen']} of {steps['total']} steps"]
            if "with_prompt" in steps:
                lines.append(_steps_line(steps))
                if executor := _executor_line(steps):
                    lines.append(executor)
                for key, what in (("with_prompt", "steps with prompt tokens"),
                                  ("decode_only", "decode-only steps")):
                    if steps[key].get("floor_ms"):
                        lines.append(_step_floor_line(steps[key], what))
                decode = steps["decode_only"]
                if decode.get("memory_floor_ms") and not decode.get("floor_ms"):
                    lines.append(_floor_line(decode))
            if run.get("graphs"):
                g = run["graphs"]
                lines.append(f"  CUDA graphs: {g['replays']} decode steps replayed, {g['captured']} "
                             f"captured ({g['capture_s']:.2f} s of the host's), {g['eager_steps']} "
                             "steps launch by launch")
            lines += host_lines(run.get("host"), "  ")
            if run.get("profile"):
                p = run["profile"]
                lines += [f"  {p['missed']}"] if "missed" in p else profile_lines(p)
            lines += _latency_rows(run["metrics"])
        if len(doc["runs"]) > 1:
            lines += ["", f"  {'load':<28}{'req/s':>9}{'out tok/s':>11}{'TTFT p50':>10}"
                          f"{'ITL p50':>9}{'E2E p50':>9}"]
            for run in doc["runs"]:
                m = run["metrics"]
                itl = m["itl_ms"]["p50"] if m["itl_ms"] else float("nan")
                lines.append(f"  {run['load']['description']:<28}{m['requests_per_s']:>9.2f}"
                             f"{m['output_tokens_per_s']:>11.1f}{m['ttft_ms']['p50']:>10.1f}"
                             f"{itl:>9.2f}{m['e2e_ms']['p50']:>9.1f}")
        base = doc["baseline"]
        if base:
            share = base["num_requests"]
            total = doc["dataset"]["num_requests"]
            lines += ["", f"HuggingFace — {base['method']}"
                          + (f" ({share} of {total} requests)" if share < total else ""),
                      _throughput_line(base["metrics"])]
            lines += _latency_rows(base["metrics"])
            lines.append("Kiln/HF (best Kiln run): " + " · ".join(
                f"{k.replace('_per_s', '/s').replace('_', ' ')} {v:.2f}x" for k, v in base["ratio"].items()))
    else:
        lat = doc["latency"]
        k = lat["kiln"]
        lines += ["", f"batch 1 · input {k['input_len']} · output {k['output_len']} · "
                      f"{k['iterations']} iterations",
                  f"  {'':<22}{'decode tok/s':>13}{'TTFT ms p50':>13}{'E2E ms p50':>12}"]
        for name, r in (("Kiln", k), ("HuggingFace generate", lat["hf"])):
            if r:
                lines.append(f"  {name:<22}{r['decode_tokens_per_s']:>13.1f}"
                             f"{r['ttft_ms']['p50']:>13.2f}{r['e2e_ms']['p50']:>12.1f}")
        if lat["hf"]:
            lines.append(f"  HuggingFace: transformers generate, batch 1; {lat['hf']['weights']}")
        if lat["ratio"]:
            lines.append("Kiln/HF: " + " · ".join(f"{key.replace('_', ' ')} {v:.2f}x"
                                                   for key, v in lat["ratio"].items()))
    lines += [""] + _roofline_lines(doc["roofline"])
    if doc.get("matmul_rate"):
        m = doc["matmul_rate"]
        lines.append(f"matmul rate (the steps' floors): {si(m['flops_per_s'], 'FLOP/s')}, "
                     f"{m['method']}")
    return "\n".join(lines)


# -- the plot -----------------------------------------------------------------------------

def plot(doc: dict, path: str) -> None:
    """Latency against throughput, one point per Kiln run (labelled by its load), HF apart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("itl_ms", "p50 inter-token latency (ms)"), ("e2e_ms", "p50 end-to-end latency (ms)"))
    runs = doc["runs"]
    xs = [r["metrics"]["output_tokens_per_s"] for r in runs]
    for ax, (key, label) in zip(axes, panels):
        ys = [(r["metrics"][key] or {}).get("p50", float("nan")) for r in runs]
        ax.plot(xs, ys, "o-", label="Kiln")
        for x, y, r in zip(xs, ys, runs):
            ax.annotate(r["load"]["description"].replace("concurrency ", "c="), (x, y),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        base = doc.get("baseline")
        if base and base["metrics"][key]:
            ax.plot([base["metrics"]["output_tokens_per_s"]], [base["metrics"][key]["p50"]], "s",
                    label=f"HF generate (batch {base['batch_size']})")
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    env = doc["env"]
    fig.suptitle(f"{doc['engine']['architecture']} {doc['engine']['dtype']} on {env['device_name']} "
                 f"· {doc['dataset']['num_requests']} requests", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
