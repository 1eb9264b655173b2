"""engine-eval: teacher-forced perplexity of an engine on a text, so that what quantization
costs is a number.

The text is cut into windows of `window` tokens; each window is prefilled as one fresh
sequence, in chunks the plan is sized for, asking the step for the logits of every token
(last_token_index lists every row of the chunk). Every token but a window's first is scored.
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


def perplexity(engine: Engine, ids: list[int], window: int = DEFAULT_WINDOW, backend=None,
               max_tokens: int | None = None, progress=None) -> Perplexity:
    """Perplexity of `engine` on token ids; `backend` defaults to the CPU reference backend."""
    b = engine.config.build
    if window < 2:
        raise KilnError(f"--window must be at least 2 tokens, got {window}")
    window = min(window, b.max_seq_len)
    ids = ids[:max_tokens] if max_tokens else ids
    if len(ids) < 2:
        raise KilnError(f"the text has {len(ids)} tokens; perplexity needs at least 2")
    blocks = -(-window // b.tokens_per_block)
    if backend is None:
        from kiln.runtime.reference import ReferenceBackend
        backend = ReferenceBackend(engine, blocks)
    elif backend.num_blocks < blocks:
        raise KilnError(f"the backend holds {backend.num_blocks} KV blocks, a {window}-token "
                        f"window needs {blocks}; lower --window")
    rows = min(b.max_num_tokens, b.max_batch_size)  # the plan's limits on tokens and logits rows
    result = Perplexity(0, 0.0, 0)
    for begin in range(0, len(ids) - 1, window):
        chunk = ids[begin: begin + window]
        if len(chunk) < 2:
            break
        for start, step in window_steps(chunk, rows, b.tokens_per_block, b.max_blocks_per_seq):
            logits = torch.from_numpy(np.asarray(backend.forward(step))).float()
            targets = torch.tensor(chunk[start + 1: start + 1 + logits.shape[0]], dtype=torch.long)
            logprobs = torch.log_softmax(logits[: targets.shape[0]], dim=-1)
            result.nll -= float(logprobs.gather(1, targets[:, None]).sum())
            result.tokens += targets.shape[0]
        result.windows += 1
        if progress:
            progress(min(begin + window, len(ids)), len(ids))
    return result


def _backend(engine: Engine, device: str):
    from kiln import _core

    has_gpu = hasattr(_core, "PlanExecutor") and torch.cuda.is_available() and engine.kernels
    if device == "cuda" and not has_gpu:
        raise KilnError("--device cuda asked for, but there is no CUDA GPU, no GPU support in "
                        "kiln._core, or the engine has no GPU kernels; use --device cpu")
    if device == "cpu" or not has_gpu:
        return None
    return _core.PlanExecutor(engine, 0.9)


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
@one_line_errors
def eval_main(engine_dir, text_file, window, max_tokens, device, as_json):
    """Teacher-forced perplexity of an engine on a text."""
    from kiln.builder.engine import load_engine
    from kiln.quantize.dataset import DEFAULT_NAME, read_text, tokenize

    engine = load_engine(engine_dir)
    ids = tokenize(read_text(text_file, option="--text"), engine.tokenizer_dir)
    b = engine.config.build
    backend = _backend(engine, device)
    start = time.perf_counter()
    result = perplexity(engine, ids, window, backend, max_tokens)
    seconds = time.perf_counter() - start
    summary = {"engine": str(engine_dir), "text": text_file or DEFAULT_NAME,
               "quant": b.quant, "kv_cache_dtype": b.kv_cache_dtype, "dtype": b.dtype,
               "perplexity": result.value, "tokens": result.tokens, "windows": result.windows,
               "window": min(window, b.max_seq_len), "seconds": round(seconds, 2)}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"perplexity {result.value:.4f} on {result.tokens} tokens of {summary['text']} "
               f"({result.windows} windows of {summary['window']}; {b.dtype}, quant {b.quant}, "
               f"KV cache {b.kv_cache_dtype}) in {seconds:.1f}s")
