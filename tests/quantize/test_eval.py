"""engine-eval: teacher-forced perplexity, checked against transformers on the same windows."""
from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from click.testing import CliRunner

from kiln.builder.build import build_engine
from kiln.builder.engine import load_engine
from kiln.builder.errors import KilnError
from kiln.builder.models import BuildConfig
from kiln.quantize.dataset import default_text, tokenize
from kiln.runtime.eval import eval_main, perplexity
from kiln_testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ckpt = make_tiny_checkpoint("llama", root / "hf", seed=3)
    engines = {}
    for rows in (16, 64):
        build = BuildConfig(dtype="float32", max_batch_size=rows, max_seq_len=96,
                            max_num_tokens=rows, tokens_per_block=8)
        build_engine(ckpt, root / f"e{rows}", build, progress=False)
        engines[rows] = load_engine(root / f"e{rows}")
    ids = tokenize(default_text(), engines[16].tokenizer_dir)[:300]
    return ckpt, engines, ids


def hf_perplexity(ckpt, ids: list[int], window: int) -> tuple[float, int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[begin: begin + window]])
            logprobs = torch.log_softmax(model(chunk).logits[0, :-1].double(), -1)
            nll -= logprobs.gather(1, chunk[0, 1:, None]).sum().item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count), count


def test_perplexity_equals_transformers(tiny):
    ckpt, engines, ids = tiny
    expected, count = hf_perplexity(ckpt, ids, 80)
    for engine in engines.values():  # 16 or 64 tokens per step: the same numbers
        result = perplexity(engine, ids, window=80)
        assert (result.tokens, result.windows) == (count, 4) == (296, 4)
        assert result.value == pytest.approx(expected, rel=1e-5)
    # the window is capped at the engine's max_seq_len
    assert perplexity(engines[64], ids[:200], window=500).windows == 3


def test_windows_side_by_side_equal_transformers(tiny):
    """The GPU's way (lockstep_steps: the windows as sequences of their own, a token each a
    step), run on the reference backend: the same perplexity, whether all windows fit one
    batch or the cache holds two at a time (the last window shorter)."""
    from kiln.runtime.reference import ReferenceBackend
    ckpt, engines, ids = tiny
    expected, count = hf_perplexity(ckpt, ids[:250], 80)
    engine = engines[16]
    for num_blocks in (64, 20):  # 80-token windows take 10 blocks of 8
        backend = ReferenceBackend(engine, num_blocks)
        result = perplexity(engine, ids[:250], window=80, backend=backend, lockstep=True)
        assert (result.tokens, result.windows) == (count, 4) == (246, 4)
        assert result.value == pytest.approx(expected, rel=1e-5)


def test_lockstep_steps_lay_out_each_window_in_its_own_blocks():
    from kiln.runtime.eval import lockstep_steps
    windows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    steps = list(lockstep_steps(windows, tokens_per_block=2, max_blocks=4))
    assert [(t, live) for t, live, _ in steps] == [(0, [0, 1]), (1, [0, 1]), (2, [0]), (3, [0])]
    _, _, step = steps[1]
    assert step["input_ids"].tolist() == [6, 11] and step["positions"].tolist() == [1, 1]
    assert step["block_tables"].tolist() == [[0, 1, 2, 0], [3, 4, 5, 0]]
    assert step["slot_mapping"].tolist() == [1, 7] and step["context_lens"].tolist() == [2, 2]
    _, _, step = steps[2]
    assert step["slot_mapping"].tolist() == [2] and step["block_tables"].tolist() == [[0, 1, 2, 0]]
    assert step["query_start"].tolist() == [0, 1] and step["last_token_index"].tolist() == [0]


def test_max_tokens_and_errors(tiny):
    _, engines, ids = tiny
    assert perplexity(engines[16], ids, window=50, max_tokens=101).tokens == 98
    with pytest.raises(KilnError, match="the text has 1 tokens; perplexity needs at least 2"):
        perplexity(engines[16], ids[:1])
    with pytest.raises(KilnError, match="--window must be at least 2 tokens"):
        perplexity(engines[16], ids, window=1)
    with pytest.raises(KilnError, match="--max-tokens must be at least 2 tokens, got 0"):
        perplexity(engines[16], ids, max_tokens=0)


def test_engine_eval_command(tiny, tmp_path):
    _, engines, _ = tiny
    text = tmp_path / "text.jsonl"
    text.write_text("\n".join(json.dumps({"text": t}) for t in default_text().split("\n\n")[:20]))
    result = CliRunner().invoke(eval_main, [str(engines[64].path), "--text", str(text),
                                            "--window", "64", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["text"] == str(text) and summary["window"] == 64 and summary["tokens"] > 100
    assert summary["quant"] == "none" and summary["perplexity"] > 1
    assert summary["fp8_fast_accumulation"] is False
    fast = CliRunner().invoke(eval_main, [str(engines[64].path), "--device", "cpu",
                                          "--fp8-fast-accumulation"])
    assert fast.exit_code == 1
    assert fast.stderr.strip() == ("error: --fp8-fast-accumulation applies to the GPU backend's FP8 "
                                   "GEMMs; this run is on the CPU (drop the flag or use --device cuda)")
    promoted = CliRunner().invoke(eval_main, [str(engines[64].path), "--text", str(text),
                                              "--window", "64", "--json", "--device", "cpu",
                                              "--no-fp8-fast-accumulation"])
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["perplexity"] == summary["perplexity"]
    result = CliRunner().invoke(eval_main, [str(engines[64].path), "--max-tokens", "40"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("perplexity ") and "on 39 tokens of pydoc_data.topics" in result.stdout
    missing = CliRunner().invoke(eval_main, [str(engines[64].path), "--text", str(tmp_path / "no")])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (f"error: --text {tmp_path / 'no'} does not exist; pass a "
                                      "UTF-8 text or .jsonl file, or leave it out to use "
                                      "pydoc_data.topics")
