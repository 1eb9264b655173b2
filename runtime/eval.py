"""engine-eval: teacher-forced perplexity of an engine on a text, so that what quantization
costs is a number.

The text is cut into windows of `window` tokens, each scored as one fresh sequence; every token
but a window's first is scored. On the CPU reference backend a window is prefilled in chunks the
plan is sized for, asking the step for the logits of every token (last_token_index lists every
row of the chunk). A GPU plan returns one row of logits a sequence, so there the windows run side
by side as sequences of their own, one token each a step (lockstep_steps): as many windows a step
as the plan's batch and the cache take, the logits of each token read as it is decoded.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import click
import numpy as np
import torch

from kiln.builder.cli import one_line_errors
from kiln.builder.engine import Engine
from kiln.builder.errors import KilnError

DEFAULT_WINDOW = 1024


@dataclass(slots=True)
class Perplexity:
    tokens: int      # tokens scored
    nll: float       # their summed negative log-likelihood (nats)
    windows: int

    @property
    def value(self) -> float:
        return math.exp(self.nll / self.tokens)


def window_steps(window_ids: list[int], rows: int, tokens_per_block: int, max_blocks: int):
    """The steps that prefill one window (blocks 0, 1, ... of the cache), `rows` tokens each."""
    table = np.zeros((1, max_blocks), dtype=np.int32)
    used = -(-len(window_ids) // tokens_per_block)
    table[0, :used] = np.arange(used, dtype=np.int32)
    for start in range(0, len(window_ids), rows):
        part = window_ids[start: start + rows]
        positions = np.arange(start, start + len(part))
        yield start, {
            "input_ids": np.asarray(part, dtype=np.int32),
            "positions": positions.astype(np.int32),
            "slot_mapping": positions.astype(np.int64),  # block b holds positions b*tpb...
            "block_tables": table,
            "context_lens": np.array([start + len(part)], dtype=np.int32),
            "query_start": np.array([0, len(part)], dtype=np.int32),
            "last_token_index": np.arange(len(part), dtype=np.int32),
        }


def lockstep_steps(windows: list[list[int]], tokens_per_block: int, max_blocks: int):
    """The steps that decode `windows` side by side, one token of each a step (window i in
    blocks i * blocks_per_window ...): (t, live windows, step), the step's row j being window
    live[j] at position t. A window drops out after its last token but one, whose logits
    score the last."""
    blocks = -(-max(len(w) for w in windows) // tokens_per_block)
    table = np.zeros((len(windows), max_blocks), dtype=np.int32)
    table[:, :blocks] = np.arange(len(windows) * blocks, dtype=np.int32).reshape(-1, blocks)
    for t in range(max(len(w) for w in windows) - 1):
        live = [i for i, w in enumerate(windows) if t < len(w) - 1]
        n = len(live)
        yield t, live, {
            "input_ids": np.array([windows[i][t] for i in live], dtype=np.int32),
            "positions": np.full(n, t, dtype=np.int32),
            "slot_mapping": np.array([table[i, t // tokens_per_block] * tokens_per_block
                                      + t % tokens_per_block for i in live], dtype=np.int64),
            "block_tables": table[live],
            "context_lens": np.full(n, t + 1, dtype=np.int32),
            "query_start": np.arange(n + 1, dtype=np.int32),
            "last_token_index": np.arange(n, dtype=np.int32),
        }


def _score(result: "Perplexity", logits, targets: list[int]) -> None:
    logprobs = torch.log_softmax(torch.from_numpy(np.asarray(logits)).float(), dim=-1)
    target = torch.tensor(targets, dtype=torch.long)
    result.nll -= float(logprobs[: len(targets)].gather(1, target[:, None]).sum())
    result.tokens += len(targets)


def perplexity(engine: Engine, ids: list[int], window: int = DEFAULT_WINDOW, backend=None,
               max_tokens: int | None = None, progress=None,
               lockstep: bool | None = None) -> Perplexity:
    """Perplexity of `engine` on token ids; `backend` defaults to the CPU reference backend.
    `lockstep`: decode the windows side by side a token a step (lockstep_steps), as a backend
    returning one row of logits a sequence needs; None: for any backend but the reference one."""
    b = engine.config.build
    if window < 2:
        raise KilnError(f"--window must be at least 2 tokens, got {window}")
    if max_tokens is not None and max_tokens < 2:
        raise KilnError(f"--max-tokens must be at least 2 tokens, got {max_tokens}")
    window = min(window, b.max_seq_len)
    ids = ids[:max_tokens] if max_tokens is not None else ids
    if len(ids) < 2:
        raise KilnError(f"the text has {len(ids)} tokens; perplexity needs at least 2")
    blocks = -(-window // b.tokens_per_block)
    from kiln.runtime.reference import ReferenceBackend
    if backend is None:
        backend = ReferenceBackend(engine, blocks)
    elif backend.num_blocks < blocks:
        raise KilnError(f"the backend holds {backend.num_blocks} KV blocks, a {window}-token "
                        f"window needs {blocks}; lower --window")
    if lockstep is None:
        lockstep = not isinstance(backend, ReferenceBackend)
    rows = min(b.max_num_tokens, b.max_batch_size)  # the plan's limits on tokens and logits rows
    windows = [ids[begin: begin + window] for begin in range(0, len(ids) - 1, window)]
    windows = [w for w in windows if len(w) >= 2]
    result = Perplexity(0, 0.0, 0)
    if lockstep:
        side_by_side = max(1, min(rows, backend.num_blocks // blocks))
        for first in range(0, len(windows), side_by_side):
            group = windows[first: first + side_by_side]
            for t, live, step in lockstep_steps(group, b.tokens_per_block, b.max_blocks_per_seq):
                _score(result, backend.forward(step), [group[i][t + 1] for i in live])
            result.windows += len(group)
            if progress:
                progress(min((first + len(group)) * window, len(ids)), len(ids))
        return result
    for w, chunk in enumerate(windows):
        for start, step in window_steps(chunk, rows, b.tokens_per_block, b.max_blocks_per_seq):
            _score(result, backend.forward(step), chunk[start + 1: start + 1 + rows])
        result.windows += 1
        if progress:
            progress(min((w + 1) * window, len(ids)), len(ids))
    return result


def _backend(engine: Engine, device: str, fp8_fast_accumulation: bool | None = None):
    from kiln import _core
    from kiln.runtime.model_runner import fp8_fast_accumulation_on_gpu

    has_gpu = hasattr(_core, "PlanExecutor") and torch.cuda.is_available() and engine.kernels
    if device == "cuda" and not has_gpu:
        raise KilnError("--device cuda asked for, but there is no CUDA GPU, no GPU support in "
                        "kiln._core, or the engine has no GPU kernels; use --device cpu")
    if device == "cpu" or not has_gpu:
        if fp8_fast_accumulation:
            raise KilnError("--fp8-fast-accumulation applies to the GPU backend's FP8 GEMMs; this "
                            "run is on the CPU (drop the flag or use --device cuda)")
        return None
    backend = _core.PlanExecutor(engine, 0.9)
    backend.fp8_fast_accumulation = fp8_fast_accumulation_on_gpu(fp8_fast_accumulation)
    return backend


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine_dir", type=click.Path())
@click.option("--text", "text_file", type=click.Path(), default=None,
              help="UTF-8 text or .jsonl ({\"text\": ...} lines). Default: pydoc_data.topics.")
@click.option("--window", type=int, default=DEFAULT_WINDOW, show_default=True,
              help="Tokens per window (capped at the engine's max_seq_len).")
@click.option("--max-tokens", type=int, default=None, help="Score only the text's first N tokens.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--fp8-fast-accumulation/--no-fp8-fast-accumulation", default=None,
              help="On the GPU, FP8 GEMMs accumulate without promoting partial sums to float32 "
                   "(the default there); --no-fp8-fast-accumulation promotes them.")
@one_line_errors
def eval_main(engine_dir, text_file, window, max_tokens, device, as_json, fp8_fast_accumulation):
    """Teacher-forced perplexity of an engine on a text."""
    from kiln.builder.engine import load_engine
    from kiln.quantize.dataset import DEFAULT_NAME, read_text, tokenize
    from kiln.runtime.model_runner import runs_fp8_fast

    engine = load_engine(engine_dir)
    ids = tokenize(read_text(text_file, option="--text"), engine.tokenizer_dir)
    b = engine.config.build
    backend = _backend(engine, device, fp8_fast_accumulation)
    start = time.perf_counter()
    result = perplexity(engine, ids, window, backend, max_tokens)
    seconds = time.perf_counter() - start
    summary = {"engine": str(engine_dir), "text": text_file or DEFAULT_NAME,
               "quant": b.quant, "kv_cache_dtype": b.kv_cache_dtype, "dtype": b.dtype,
               "perplexity": result.value, "tokens": result.tokens, "windows": result.windows,
               "window": min(window, b.max_seq_len), "seconds": round(seconds, 2),
               "fp8_fast_accumulation": runs_fp8_fast(engine, backend)}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"perplexity {result.value:.4f} on {result.tokens} tokens of {summary['text']} "
               f"({result.windows} windows of {summary['window']}; {b.dtype}, quant {b.quant}, "
               f"KV cache {b.kv_cache_dtype}) in {seconds:.1f}s")
