"""engine-triton-repo: write a Triton Inference Server model repository for an engine."""
from __future__ import annotations

import click

from kiln.builder.cli import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", "engine_dir", required=True, type=click.Path(), help="Engine directory.")
@click.option("--output", required=True, type=click.Path(), help="Model repository to write.")
@click.option("--name", default="kiln", show_default=True, help="Name of the engine model.")
@click.option("--max-batch-size", type=int, default=None, help="Default: the engine's.")
@click.option("--max-num-tokens", type=int, default=None, help="Default: the engine's.")
@click.option("--kv-cache-free-gpu-memory-fraction", type=float, default=0.9, show_default=True)
@click.option("--enable-kv-cache-reuse/--disable-kv-cache-reuse", default=True, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@one_line_errors
def triton_repo_main(engine_dir, output, name, max_batch_size, max_num_tokens,
                     kv_cache_free_gpu_memory_fraction, enable_kv_cache_reuse, device, overwrite):
    """Write a Triton model repository (preprocessing, engine, postprocessing, ensemble)."""
    from kiln.runtime.triton.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(
        name=name, max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
        kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
        enable_kv_cache_reuse=enable_kv_cache_reuse, device=device)
    out = write_repository(engine_dir, output, options, overwrite=overwrite)
    click.echo(f"wrote {out}: preprocessing, {name}, postprocessing, ensemble")
    click.echo(f"  serve it: tritonserver --model-repository {out.resolve()}  "
               "(Python backend, with Kiln installed in its Python)")
