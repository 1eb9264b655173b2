"""engine-bench: prepare datasets, measure throughput and latency, against HuggingFace."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kiln.builder.cli import one_line_errors
from kiln.builder.errors import KilnError, os_error_as

CONTEXT = {"help_option_names": ["-h", "--help"]}
# Decode tokens of the batch-1 probe that every throughput report sets against the roofline.
PROBE_TOKENS = 64
PROBE_WARMUP, PROBE_ITERATIONS = 1, 2


@click.group(context_settings=CONTEXT)
def bench_main():
    """Benchmark a Kiln engine: datasets, throughput, latency, HuggingFace and the roofline."""


# -- prepare ------------------------------------------------------------------------------

@bench_main.group(context_settings=CONTEXT)
@click.option("--output", "-o", default="-", show_default=True, type=click.Path(),
              help="JSON-lines file to write ('-': standard output).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def prepare(ctx, output, seed):
    """Write a synthetic dataset: one {"input_ids", "output_tokens"} object a line."""
    ctx.obj = {"output": output, "seed": seed}


def _lengths(f):
    for name, what in (("output", "Output"), ("input", "Input")):
        f = click.option(f"--{name}-stdev", type=float, default=0.0, show_default=True,
                         help=f"{what} length standard deviation (0: fixed).")(f)
        f = click.option(f"--{name}-mean", type=float, required=name == "output",
                         help=f"{what} length mean (tokens).")(f)
    return click.option("--num-requests", type=int, required=True)(f)


def _emit(ctx, requests) -> None:
    from kiln.runtime.bench.dataset import DatasetStats, write_jsonl

    output = ctx.obj["output"]
    if output == "-":
        for r in requests:
            click.echo(json.dumps({"task_id": r.task_id, "input_ids": r.input_ids,
                                   "output_tokens": r.output_tokens}))
    else:
        with os_error_as(_UNWRITABLE.format(option="--output", path=output)):
            write_jsonl(output, requests)
    click.echo(f"dataset: {DatasetStats.of(requests).describe()}"
               + ("" if output == "-" else f" -> {output}"), err=True)


def _engine_vocab(engine_dir: str) -> int:
    from kiln.builder.engine.loader import EngineConfig

    config, _ = EngineConfig.read(Path(engine_dir) / "config.json")
    return config.model.vocab_size


@prepare.command("token-norm-dist", context_settings=CONTEXT)
@_lengths
@click.option("--engine", "engine_dir", type=click.Path(), help="Engine whose vocabulary to draw from.")
@click.option("--vocab-size", type=int, help="Vocabulary size to draw from (instead of --engine).")
@click.pass_context
@one_line_errors
def token_norm_dist(ctx, num_requests, input_mean, input_stdev, output_mean, output_stdev,
                    engine_dir, vocab_size):
    """Random token ids with normally distributed (or fixed) input and output lengths."""
    from kiln.runtime.bench.dataset import LengthDist, synthetic

    if (engine_dir is None) == (vocab_size is None):
        raise KilnError("pass exactly one of --engine DIR and --vocab-size N")
    if input_mean is None:
        raise KilnError("pass --input-mean (the mean prompt length in tokens)")
    vocab = vocab_size if vocab_size is not None else _engine_vocab(engine_dir)
    _emit(ctx, synthetic(num_requests, LengthDist(input_mean, input_stdev),
                         LengthDist(output_mean, output_stdev), vocab, ctx.obj["seed"]))


@prepare.command("text", context_settings=CONTEXT)
@click.argument("text_file", type=click.Path())
@_lengths
@click.option("--engine", "engine_dir", type=click.Path(), help="Engine whose tokenizer to use.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(),
              help="HuggingFace tokenizer directory (instead of --engine).")
@click.option("--lines", is_flag=True, help="One prompt per line, at its own length (no --input-mean).")
@click.pass_context
@one_line_errors
def text(ctx, text_file, num_requests, input_mean, input_stdev, output_mean, output_stdev,
         engine_dir, tokenizer_dir, lines):
    """Prompts cut from a text file by a tokenizer: windows of the drawn length, or lines."""
    from kiln.runtime.bench.dataset import LengthDist, from_lines, from_text

    if (engine_dir is None) == (tokenizer_dir is None):
        raise KilnError("pass exactly one of --engine DIR and --tokenizer DIR")
    path = Path(text_file)
    if not path.is_file():
        raise KilnError(f"text file {path} does not exist")
    tokenizer = _tokenizer(Path(engine_dir) / "tokenizer" if engine_dir else Path(tokenizer_dir))
    content = path.read_text(encoding="utf-8", errors="replace")
    outputs, seed = LengthDist(output_mean, output_stdev), ctx.obj["seed"]
    if lines:
        requests = from_lines(content, lambda s: tokenizer(s)["input_ids"], num_requests, outputs, seed)
    else:
        if input_mean is None:
            raise KilnError("pass --input-mean (prompt length in tokens) or --lines")
        requests = from_text(content, lambda s: tokenizer(s, add_special_tokens=False)["input_ids"],
                             num_requests, LengthDist(input_mean, input_stdev), outputs, seed)
    _emit(ctx, requests)


def _tokenizer(directory: Path):
    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        raise KilnError(f"{directory} holds no tokenizer; pass --tokenizer with a HuggingFace "
                        "tokenizer directory, or use token-norm-dist")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(directory)


# -- build ---------------------------------------------------------------------------------

@bench_main.command("build", context_settings=CONTEXT | {"ignore_unknown_options": True})
@click.option("--dataset", "datasets", required=True, multiple=True, type=click.Path(),
              help="JSON lines from `engine-bench prepare`: the lengths to size the engine for "
                   "(repeatable: an engine for each of them, its limits the largest).")
@click.option("--gpu-memory-gib", type=float,
              help="Memory of the GPU the engine will run on. Default: GPU 0's.")
@click.option("--kv-cache-free-gpu-memory-fraction", "kv_fraction", type=float, default=0.9,
              show_default=True, help="The share of free memory the KV cache will get at run time.")
@click.option("--print-only", is_flag=True, help="Print the engine-build command; build nothing.")
@click.argument("build_args", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def build(datasets, gpu_memory_gib, kv_fraction, print_only, build_args):
    """engine-build, sized for throughput runs of the datasets on this GPU.

    BUILD_ARGS are engine-build's options (e.g. --random-weights llama-3.1-8b --dtype bfloat16
    --output DIR). Unless given there, --max-batch-size is the number of a dataset's requests
    the KV cache holds, --max-num-tokens what a step needs to keep that batch full, and
    --max-seq-len the dataset's longest request (kiln.runtime.bench.tuning says how), each the
    largest over the datasets. Each dataset's line ends with the batch a throughput run of it
    is best capped at (`engine-bench throughput --max-batch-size`): what the cache holds, or,
    where the run goes in waves of requests that finish together, the batch that makes the
    waves equal."""
    import shlex
    import statistics

    from click.core import ParameterSource

    from kiln.builder.cli import build_main
    from kiln.runtime.bench.dataset import read_jsonl
    from kiln.runtime.bench.tuning import engine_settings

    loaded = []
    for dataset in datasets:
        path = Path(dataset)
        if not path.is_file():
            raise KilnError(f"dataset {path} does not exist; write one with `engine-bench prepare`")
        requests = read_jsonl(path)
        if not requests:
            raise KilnError(f"dataset {path} holds no request")
        loaded.append((path, requests))
    args = list(build_args)
    ctx = build_main.make_context("engine-build", list(args))
    params = ctx.params
    given = {name for name in ("max_batch_size", "max_num_tokens", "max_seq_len")
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    for name in sorted(given):
        if params[name] < 1:  # refused here, before it sizes the rest around it
            raise KilnError(f"--{name.replace('_', '-')} must be at least 1, got {params[name]}")
    model = _build_model(params)
    quant, kv_cache_dtype = _build_quant(params)
    memory = _gpu_memory(gpu_memory_gib)
    limits: dict[str, int] = {}
    for path, requests in loaded:
        outputs = [r.output_tokens for r in requests]
        output_len = sum(outputs) / len(outputs)
        settings = engine_settings(
            model, dtype=params["dtype"], quant=quant, kv_cache_dtype=kv_cache_dtype,
            gpu_memory=memory,
            input_len=sum(r.input_len for r in requests) / len(requests),
            output_len=output_len,
            output_spread=statistics.pstdev(outputs) / output_len,
            max_len=max(r.input_len + r.output_tokens for r in requests),
            kv_fraction=kv_fraction, tokens_per_block=params["tokens_per_block"],
            max_batch_size=params["max_batch_size"] if "max_batch_size" in given else None)
        click.echo(f"sizing {path}: {settings.describe(len(requests))}")
        for name, value in settings.limits().items():
            limits[name] = max(limits.get(name, 0), value)
    for name, value in limits.items():
        if name not in given:
            args += [f"--{name.replace('_', '-')}", str(value)]
    if given:
        click.echo(f"given: {', '.join(sorted(given))}")
    click.echo("engine-build " + shlex.join(args))
    if not print_only:
        build_main.main(args=args, prog_name="engine-build", standalone_mode=False)


def _build_model(params: dict):
    from kiln.builder.models import ModelConfig

    if params["random_weights"] is not None:
        from kiln.builder.random_weights import RandomCheckpoint

        hf_config = RandomCheckpoint(params["random_weights"], seed=params["seed"],
                                     num_layers=params["random_layers"]).hf_config
    elif params["checkpoint"] is not None:
        from kiln.builder.checkpoint import open_checkpoint

        with open_checkpoint(params["checkpoint"]) as ckpt:
            hf_config = ckpt.hf_config
    else:
        raise KilnError("pass engine-build's --checkpoint PATH or --random-weights NAME: the "
                        "model to size the engine for")
    return ModelConfig.from_hf(hf_config)


def _build_quant(params: dict) -> tuple[str, str]:
    from kiln.quantize.options import cli_settings

    checkpoint = None if params["random_weights"] is not None else params["checkpoint"]
    return cli_settings(checkpoint, params["quant"], params["kv_cache_dtype"])


def _gpu_memory(gib: float | None) -> float:
    from kiln.runtime.bench.tuning import GIB

    if gib is not None:
        if gib <= 0:
            raise KilnError(f"--gpu-memory-gib must be positive, got {gib}")
        return gib * GIB
    import torch

    if not torch.cuda.is_available():
        raise KilnError("no GPU here; pass --gpu-memory-gib with the memory of the GPU the engine "
                        "will run on")
    return float(torch.cuda.get_device_properties(0).total_memory)


# -- throughput and latency ---------------------------------------------------------------

def _common(f):
    for option in reversed([
        click.option("--engine", "engine_dir", required=True, type=click.Path(), help="Engine directory."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--baseline", type=click.Choice(["hf"]),
                     help="Also run HuggingFace transformers generate on the same device."),
        click.option("--json", "json_path", type=click.Path(),
                     help="Write the report as JSON to this file ('-': standard output)."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]):
        f = option(f)
    return f


@bench_main.command(context_settings=CONTEXT)
@_common
@click.option("--dataset", required=True, type=click.Path(), help="JSON lines from `engine-bench prepare`.")
@click.option("--num-requests", type=int, help="Use only the first N requests of the dataset.")
@click.option("--concurrency", help="Most requests in flight; a comma list (1,8,64) runs a sweep.")
@click.option("--request-rate", type=float, help="Requests per second, Poisson arrivals. "
              "Default: all requests at once.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed requests first.")
@click.option("--max-batch-size", type=int, help="Default: the engine's.")
@click.option("--max-num-tokens", type=int, help="Default: the engine's.")
@click.option("--kv-cache-free-gpu-memory-fraction", "kv_fraction", type=float, default=0.9, show_default=True)
@click.option("--capacity-scheduler-policy", type=click.Choice(["max_utilization", "guaranteed_no_evict"]),
              default="max_utilization", show_default=True,
              help="Admit while prompts fit and preempt when out of KV blocks, or admit only what can "
                   "run to its full length.")
@click.option("--kv-cache-reuse/--no-kv-cache-reuse", default=False, show_default=True,
              help="Prefix caching (off: repeated prompts would not be computed).")
@click.option("--baseline-max-requests", type=int, help="Run only the first N requests through HF.")
@click.option("--baseline-batch-size", type=int, help="HF static batch size. Default: Kiln's max batch.")
@click.option("--plot", "plot_path", type=click.Path(), help="PNG of latency against throughput.")
@click.option("--fp8-fast-accumulation/--no-fp8-fast-accumulation", default=None,
              help="FP8 GEMMs (cuBLASLt) accumulate without promoting partial sums to float32: "
                   "the default on the GPU (faster where compute-bound); "
                   "--no-fp8-fast-accumulation promotes them (more exact).")
@click.option("--profile-steps", "profile_window", metavar="START:COUNT",
              help="Record the GPU's kernels over COUNT of the run's steps from step START (0 its "
                   "first) and print each step's wall, busy and kernel times (CUDA only; the "
                   "trace perturbs the run's figures).")
@click.option("--kernels-from-rows", type=click.IntRange(min=0), default=None,
              help="From this many rows a GEMM runs Kiln's own kernel where the engine has one "
                   "that takes them, rather than cuBLASLt; 0: the faster of the two, timed at "
                   "load, at every M. Default: Kiln's kernel where the engine prefers it, timed "
                   "elsewhere. CUDA only.")
@one_line_errors
def throughput(engine_dir, device, baseline, json_path, seed, dataset, num_requests, concurrency,
               request_rate, warmup, max_batch_size, max_num_tokens, kv_fraction, capacity_scheduler_policy,
               kv_cache_reuse,
               baseline_max_requests, baseline_batch_size, plot_path, fp8_fast_accumulation,
               profile_window, kernels_from_rows):
    """Throughput and latency of a dataset: all at once, at a rate, or at fixed concurrency."""
    from kiln.runtime import ModelRunner
    from kiln.runtime.bench import baseline_hf, compute, report
    from kiln.runtime.bench.dataset import DatasetStats, check_fits, read_jsonl
    from kiln.runtime.bench.latency import run_latency
    from kiln.runtime.bench.step_profile import StepProfiler, Window
    from kiln.runtime.bench.throughput import Load, run_throughput, warm_up

    window = Window.parse(profile_window) if profile_window is not None else None
    requests = read_jsonl(dataset)
    if num_requests is not None:
        if num_requests < 1:
            raise KilnError(f"--num-requests must be at least 1, got {num_requests}")
        requests = requests[:num_requests]
    loads = [Load(c, request_rate, seed) for c in _concurrencies(concurrency)]
    for name, value in (("--baseline-max-requests", baseline_max_requests),
                        ("--baseline-batch-size", baseline_batch_size)):
        if value is not None and (not baseline or value < 1):
            raise KilnError(f"{name} takes a positive count and applies with --baseline hf only")
    _check_outputs(json_path, plot_path)
    given = (("--profile-steps", window is not None), ("--fp8-fast-accumulation", fp8_fast_accumulation is True),
             ("--kernels-from-rows", kernels_from_rows is not None))
    device, bandwidth = _device_and_bandwidth(device, tuple(flag for flag, on in given if on))
    with ModelRunner.from_dir(engine_dir, device=device, max_batch_size=max_batch_size,
                              max_num_tokens=max_num_tokens, enable_kv_cache_reuse=kv_cache_reuse,
                              kv_cache_free_gpu_memory_fraction=kv_fraction,
                              capacity_scheduler_policy=capacity_scheduler_policy,
                              fp8_fast_accumulation=fp8_fast_accumulation,
                              kernels_from_rows=kernels_from_rows) as runner:
        check_fits(requests, runner.max_seq_len, runner.vocab_size)
        warm_up(runner, requests, warmup, runner.vocab_size, seed)
        runs = [run_throughput(runner, requests, load,
                               profiler=StepProfiler(window, backend=runner.backend) if window else None)
                for load in loads]
        probe_len = min(PROBE_TOKENS, runner.max_seq_len - 1)
        prompt = requests[0].input_ids[: runner.max_seq_len - probe_len]
        # One untimed request first: a batch of one may be new to the runner here (the runs'
        # smallest batch can be larger), and its first steps time the GEMM choices for one row
        # and capture its CUDA graph, which the probe's decode rate must not hold.
        probe = run_latency(runner, prompt, probe_len, iterations=PROBE_ITERATIONS,
                            warmup=PROBE_WARMUP)
        engine, config = runner.engine, runner.executor.config
        fast_accumulation = runner.fp8_fast_accumulation
        kiln_batch = config.max_batch_size
    del runner  # its device memory goes back before the matmul and HF need it
    rate = compute.engine_matmul_rate(device, engine.config.build)
    doc = _document("throughput", device, engine)
    doc["runtime"] = {"max_batch_size": config.max_batch_size,
                      "max_num_tokens": config.max_num_tokens,
                      "kv_cache_free_gpu_memory_fraction": kv_fraction,
                      "capacity_scheduler_policy": config.capacity_scheduler_policy,
                      "kv_cache_reuse": config.enable_kv_cache_reuse,
                      "fp8_fast_accumulation": fast_accumulation,
                      "kernels_from_rows": kernels_from_rows}
    doc["dataset"] = DatasetStats.of(requests).to_json()
    doc["runs"] = [run.to_json() for run in runs]
    doc["baseline"] = None
    if baseline:
        baseline_hf.free_memory()
        share = requests[: baseline_max_requests] if baseline_max_requests else requests
        model, weights = baseline_hf.load_hf_model(engine, device)
        hf = baseline_hf.run_hf_throughput(model, weights, share, baseline_batch_size or kiln_batch, device)
        del model
        baseline_hf.free_memory()
        best = max(doc["runs"], key=lambda r: r["metrics"]["output_tokens_per_s"])["metrics"]
        doc["baseline"] = hf.to_json() | {"ratio": report.ratios(
            best, hf.metrics.to_json(), ("requests_per_s", "output_tokens_per_s", "total_tokens_per_s"))}
    _finish(doc, engine, bandwidth, probe.decode_tokens_per_s, json_path, rate)
    if plot_path:
        with os_error_as(_UNWRITABLE.format(option="--plot", path=plot_path)):
            report.plot(doc, plot_path)
        click.echo(f"plot -> {plot_path}", err=True)


@bench_main.command(context_settings=CONTEXT)
@_common
@click.option("--input-len", type=int, default=128, show_default=True)
@click.option("--output-len", type=int, default=128, show_default=True)
@click.option("--iterations", type=int, default=5, show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@one_line_errors
def latency(engine_dir, device, baseline, json_path, seed, input_len, output_len, iterations, warmup):
    """Batch-1 decode tokens/s and time to first token for one input/output length."""
    from kiln.runtime import ModelRunner
    from kiln.runtime.bench import baseline_hf
    from kiln.runtime.bench.latency import random_prompt, run_latency

    if input_len < 1:
        raise KilnError(f"--input-len must be at least 1, got {input_len}")
    _check_outputs(json_path, None)
    device, bandwidth = _device_and_bandwidth(device)
    with ModelRunner.from_dir(engine_dir, device=device, max_batch_size=1,
                              enable_kv_cache_reuse=False) as runner:
        if input_len + output_len > runner.max_seq_len:
            raise KilnError(f"--input-len {input_len} + --output-len {output_len} exceeds the "
                            f"engine's max_seq_len {runner.max_seq_len}; use shorter lengths")
        prompt = random_prompt(input_len, runner.vocab_size, seed)
        kiln = run_latency(runner, prompt, output_len, iterations, warmup)
        engine = runner.engine
    del runner
    doc = _document("latency", device, engine)
    doc["latency"] = {"kiln": kiln.to_json(), "hf": None, "ratio": None}
    if baseline:
        baseline_hf.free_memory()
        model, weights = baseline_hf.load_hf_model(engine, device)
        hf = baseline_hf.run_hf_latency(model, prompt, output_len, iterations, warmup, device)
        del model
        baseline_hf.free_memory()
        doc["latency"] |= {"hf": hf.to_json() | {"weights": weights}, "ratio": {
            "decode_tokens_per_s": kiln.decode_tokens_per_s / hf.decode_tokens_per_s,
            "ttft_speedup": hf.ttft_ms.p50 / kiln.ttft_ms.p50}}
    _finish(doc, engine, bandwidth, kiln.decode_tokens_per_s, json_path)


def _concurrencies(text: str | None) -> list[int | None]:
    if text is None:
        return [None]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KilnError(f"--concurrency takes integers separated by commas (e.g. 1,8,64), "
                        f"got {text!r}") from None
    if not values:
        raise KilnError("--concurrency is empty; give e.g. 64 or 1,8,64")
    return values


def _check_outputs(json_path: str | None, plot_path: str | None) -> None:
    """Refuse unwritable outputs before a long run, not after it."""
    for option, path in (("--json", json_path), ("--plot", plot_path)):
        if not path or path == "-":
            continue
        folder = Path(path).resolve().parent
        if not folder.is_dir():
            raise KilnError(f"{option} {path}: its folder does not exist; create it or choose another path")
        if Path(path).is_dir():
            raise KilnError(f"{option} {path} is a folder; pass a file's path")
        if not os.access(folder, os.W_OK):
            raise KilnError(f"{option} {path}: its folder is not writable; choose another path")
    if plot_path:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise KilnError("--plot needs matplotlib: pip install matplotlib (or kiln[bench])")


# An output that cannot be written, said in one line (after a run, its table is printed above).
_UNWRITABLE = "{option} {path}: cannot write it ({{reason}}); choose another path"


# Options that only mean something on the GPU, and what they do there.
GPU_ONLY = {"--profile-steps": "records the GPU's kernels",
            "--fp8-fast-accumulation": "applies to the GPU's FP8 GEMMs",
            "--kernels-from-rows": "chooses the GPU's GEMM kernels"}


def _device_and_bandwidth(asked: str, gpu_only: tuple[str, ...] = ()):
    """The device the runner will use, and its copy bandwidth, measured before the runner
    takes its memory; a GPU where options of GPU_ONLY were given (`gpu_only`)."""
    from kiln.runtime.bench.roofline import measure_copy_bandwidth
    from kiln.runtime.model_runner import pick_device

    device = pick_device(None if asked == "auto" else asked)
    if gpu_only and device != "cuda":
        raise KilnError(f"{gpu_only[0]} {GPU_ONLY[gpu_only[0]]}; this run is on {device} "
                        "(use --device cuda on a machine with a GPU)")
    return device, measure_copy_bandwidth(device)


def _document(command: str, device: str, engine) -> dict:
    from kiln.runtime.bench import report

    return {"schema": report.SCHEMA_ID, "command": command, "date": report.now_utc(),
            "env": report.environment(device), "engine": report.engine_info(engine)}


def _floors(steps: dict, engine, roofline, rate) -> None:
    """Sets a run's decode-only steps' memory floor (Roofline.decode_step_s) and, with a matmul
    rate, each kind of step's floor (compute.set_step_floors), in ms; for a model whose layers
    attend to every key (a sliding window's layers read fewer)."""
    from kiln.runtime.bench.compute import set_step_floors
    from kiln.runtime.bench.tuning import kv_bytes_per_token

    model, build = engine.config.model, engine.config.build
    decode_only = steps.get("decode_only")
    if not decode_only or model.sliding_window:
        return
    kv = kv_bytes_per_token(model, build.dtype, build.kv_cache_dtype)
    if decode_only.get("context_tokens_mean"):
        decode_only["memory_floor_ms"] = 1e3 * roofline.decode_step_s(
            kv, decode_only["context_tokens_mean"])
    if rate:
        set_step_floors(steps, engine.graph, roofline.bytes_per_token, kv,
                        roofline.bandwidth.bytes_per_s, rate)


def _finish(doc: dict, engine, bandwidth, kiln_tokens_per_s: float, json_path: str | None,
            rate=None) -> None:
    """`rate`: a throughput run's matmul rate, for its steps' floors."""
    from kiln.runtime.bench import report
    from kiln.runtime.bench.roofline import Roofline, decode_bytes_per_token, weight_bytes

    roofline = Roofline(weight_bytes(engine), decode_bytes_per_token(engine), bandwidth)
    doc["roofline"] = roofline.to_json(kiln_tokens_per_s)
    if "runs" in doc:
        doc["matmul_rate"] = rate.to_json() if rate else None
    for run in doc.get("runs", []):
        _floors(run["steps"], engine, roofline, rate)
    table = report.render(doc)
    if json_path == "-":
        click.echo(table, err=True)
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(table)
    if json_path:
        with os_error_as(_UNWRITABLE.format(option="--json", path=json_path)):
            Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
        click.echo(f"json -> {json_path}", err=True)

