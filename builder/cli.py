"""Command lines: engine-build and engine-inspect."""
from __future__ import annotations

import sys
from collections import Counter
from functools import wraps

import click

from kiln.builder.errors import KilnError


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
@click.option("--checkpoint", required=True, type=click.Path(),
              help="HuggingFace checkpoint directory or .gguf file.")
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
              help="GPU architecture to compile kernels for (repeatable). Default: 80 89 90.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def build_main(checkpoint, output, dtype, max_batch_size, max_seq_len, max_num_tokens,
               tokens_per_block, target_sm, overwrite, quiet):
    """Build a Kiln engine from a checkpoint."""
    from kiln.builder.build import build_engine
    from kiln.builder.checkpoint import open_checkpoint
    from kiln.builder.models import BuildConfig, ModelConfig

    if max_seq_len is None:
        with open_checkpoint(checkpoint) as ckpt:
            max_seq_len = min(ModelConfig.from_hf(ckpt.hf_config).max_position_embeddings, 4096)
    build = BuildConfig(dtype=dtype, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                        max_num_tokens=max_num_tokens, tokens_per_block=tokens_per_block,
                        targets=list(target_sm) or [80, 89, 90])
    report = build_engine(checkpoint, output, build, overwrite=overwrite, progress=not quiet)
    m = report.model
    click.echo(f"built {report.output}")
    click.echo(f"  model       {m.architecture}: {report.num_params / 1e6:.1f}M parameters, "
               f"{m.num_layers} layers, hidden {m.hidden_size}, vocab {m.vocab_size}")
    click.echo(f"  engine      {human_bytes(report.engine_bytes)} ({dtype}), "
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
    qkv = sum(1 for n in graph.nodes if n.op == "split")
    if qkv:
        lines.append(f"q/k/v projections into one GEMM: {qkv}")
    rope = sum(1 for n in graph.nodes if n.op == "attention" and n.attrs.get("rope"))
    if rope:
        lines.append(f"RoPE folded into attention's KV write: {rope}")
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
