"""Command lines: engine-build and engine-inspect."""
from __future__ import annotations

import sys
from collections import Counter
from functools import wraps

import click

from kiln.builder.errors import KilnError
from kiln.builder.model_shapes import SHAPE_NAMES
from kiln.quantize.mode import KV_CACHE_NAMES, QUANT_NAMES


def one_line_errors(fn):
    """Turns KilnError into `error: ...` on stderr and exit status 1, with no traceback."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KilnError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
    return wrapper


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(),
              help="HuggingFace checkpoint directory or .gguf file.")
@click.option("--random-weights", "random_weights", metavar="NAME",
              help="Instead of --checkpoint: random weights in the exact shape of a real model, "
                   f"made on the fly (for speed measurements). One of: {', '.join(SHAPE_NAMES)}.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of --random-weights.")
@click.option("--random-layers", type=int, default=None, hidden=True,
              help="Keep only the first N layers of --random-weights (tests).")
@click.option("--output", required=True, type=click.Path(), help="Engine directory to write.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float16",
              show_default=True)
@click.option("--max-batch-size", type=int, default=64, show_default=True)
@click.option("--max-seq-len", type=int, default=None,
              help="Longest sequence (prompt + output). Default: min(model limit, 4096).")
@click.option("--max-num-tokens", type=int, default=4096, show_default=True,
              help="Most tokens one step computes (prefill chunks + decodes).")
@click.option("--tokens-per-block", type=int, default=32, show_default=True)
@click.option("--target-sm", "target_sm", type=int, multiple=True,
              help="GPU architecture to compile kernels for (repeatable). Default: 80 89 90 "
                   "(89 90 for FP8).")
@click.option("--quant", metavar="MODE", default=None,
              help=f"Quantization: {'|'.join(QUANT_NAMES)} (calibrated with nvidia-modelopt). "
                   "Default: none, or a pre-quantized checkpoint's mode.")
@click.option("--kv-cache-dtype", metavar="|".join(KV_CACHE_NAMES), default="auto",
              show_default=True, help="KV cache dtype; auto: --dtype, or a pre-quantized "
                                      "checkpoint's.")
@click.option("--quant-group-size", type=int, default=None,
              help="int4_awq / int4_gptq: input channels per weight scale, 32, 64 or 128 (it "
                   "must divide every GEMM's K). Default: 128, or 64 / 32 where K needs it.")
@click.option("--calib-dataset", type=click.Path(), default=None,
              help="Calibration text (UTF-8 or .jsonl). Default: Python's pydoc_data.topics.")
@click.option("--calib-size", type=int, default=32, show_default=True,
              help="Calibration windows.")
@click.option("--calib-seq-len", type=int, default=None,
              help="Tokens per calibration window. Default: 512, or the model's limit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def build_main(checkpoint, random_weights, seed, random_layers, output, dtype, max_batch_size,
               max_seq_len, max_num_tokens, tokens_per_block, target_sm, quant, kv_cache_dtype,
               quant_group_size, calib_dataset, calib_size, calib_seq_len, overwrite, quiet):
    """Build a Kiln engine from a checkpoint (or from random weights of a named model shape)."""
    from kiln.builder.build import build_engine
    from kiln.builder.checkpoint import open_checkpoint
    from kiln.builder.models import BuildConfig, ModelConfig
    from kiln.quantize.options import CalibrationOptions, cli_settings, default_targets

    if (checkpoint is None) == (random_weights is None):
        raise KilnError("pass exactly one of --checkpoint PATH and --random-weights NAME "
                        f"(NAME one of {', '.join(SHAPE_NAMES)})")
    if random_layers is not None and random_weights is None:
        raise KilnError("--random-layers applies to --random-weights only; drop it")
    if random_weights is not None:
        from kiln.builder.random_weights import RandomCheckpoint
        checkpoint = RandomCheckpoint(random_weights, seed=seed, num_layers=random_layers)
    if max_seq_len is None:
        if random_weights is not None:
            hf_config = checkpoint.hf_config
        else:
            with open_checkpoint(checkpoint) as ckpt:
                hf_config = ckpt.hf_config
        max_seq_len = min(ModelConfig.from_hf(hf_config).max_position_embeddings, 4096)
    quant, kv_cache_dtype = cli_settings(None if random_weights else checkpoint, quant,
                                         kv_cache_dtype)
    build = BuildConfig(dtype=dtype, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                        max_num_tokens=max_num_tokens, tokens_per_block=tokens_per_block,
                        targets=list(target_sm) or default_targets(quant, kv_cache_dtype),
                        quant=quant, kv_cache_dtype=kv_cache_dtype,
                        quant_group_size=quant_group_size)
    calibration = CalibrationOptions(calib_dataset, calib_size, calib_seq_len)
    report = build_engine(checkpoint, output, build, overwrite=overwrite, progress=not quiet,
                          calibration=calibration)
    m = report.model
    click.echo(f"built {report.output}")
    click.echo(f"  model       {m.architecture}: {report.num_params / 1e6:.1f}M parameters, "
               f"{m.num_layers} layers, hidden {m.hidden_size}, vocab {m.vocab_size}")
    quantized = "" if quant == "none" else f", {quant}"
    quantized += "" if kv_cache_dtype == "auto" else f", {kv_cache_dtype} KV cache"
    click.echo(f"  engine      {human_bytes(report.engine_bytes)} ({dtype}{quantized}), "
               f"{sum(report.ops_after.values())} ops (from {sum(report.ops_before.values())}), "
               f"{report.num_kernels} kernel binaries")
    click.echo("  phases      " + ", ".join(f"{k} {v:.2f}s" for k, v in report.phases.items())
               + f"; total {sum(report.phases.values()):.2f}s")


def _fusion_lines(graph) -> list[str]:
    lines = []
    counts = Counter(graph.ops())
    for op, what in (("add_rmsnorm", "residual add + RMSNorm"),
                     ("silu_mul", "gate/up projections + SiLU-and-multiply")):
        if counts.get(op):
            lines.append(f"{what}: {counts[op]}")
    residual = sum(1 for n in graph.nodes if n.attrs.get("residual"))
    if residual:
        lines.append(f"residual adds inside the GEMM before them: {residual}")
    qkv = sum(1 for n in graph.nodes if n.op == "split")
    if qkv:
        lines.append(f"q/k/v projections into one GEMM: {qkv}")
    rope = sum(1 for n in graph.nodes if n.op == "attention" and n.attrs.get("rope"))
    if rope:
        lines.append(f"RoPE folded into attention's KV write: {rope}")
    quantized = sum(1 for n in graph.nodes if n.op == "attention" and n.attrs.get("out_qdtype"))
    if quantized:
        lines.append(f"FP8 quantization of the output in attention: {quantized}")
    gathers = [n for n in graph.nodes if n.op == "gather_last"]
    if gathers:
        lines.append(f"last-token gathers before the LM head: {len(gathers)}")
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine_dir", type=click.Path())
@one_line_errors
def inspect_main(engine_dir):
    """Print an engine's config, plan and memory plan; exit non-zero if it is refused."""
    from kiln.builder.engine import load_engine

    engine = load_engine(engine_dir)
    cfg = engine.config
    click.echo(f"engine {engine.path} (kiln {cfg.kiln_version})")
    click.echo("model:")
    for key, value in cfg.model.to_json().items():
        click.echo(f"  {key}: {value}")
    click.echo("build:")
    for key, value in cfg.build.to_json().items():
        click.echo(f"  {key}: {value}")
    graph = engine.graph
    click.echo(f"plan: {len(graph.nodes)} ops")
    for op, n in sorted(Counter(graph.ops()).items()):
        click.echo(f"  {op:<14} {n}")
    click.echo("fused:")
    for line in _fusion_lines(graph):
        click.echo(f"  {line}")
    weight_bytes = sum(t.numel() * t.element_size() for t in engine.weights.values())
    click.echo(f"weights: {len(engine.weights)} tensors, {human_bytes(weight_bytes)}")
    plan = engine.memory_plan
    sym = plan["symbols"]
    click.echo(f"memory plan: activation arena {human_bytes(plan['arena_bytes'])} for "
               f"{sym['T']} tokens x {sym['B']} sequences; {len(plan['offsets'])} activations, "
               f"{len(plan['views'])} views")
    kernels = engine.kernels.get("kernels", {}) if isinstance(engine.kernels, dict) else {}
    targets = cfg.build.targets
    click.echo(f"kernels: {len(kernels)} for targets {', '.join(f'sm_{t}' for t in targets)}"
               if kernels else "kernels: none (built without triton: runs on the CPU backend only)")
