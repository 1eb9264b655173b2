"""Engines built from tiny random checkpoints agree with HuggingFace transformers (float32):
a prefill, a chunked prefill split over two steps, and 10 decode steps, 3 sequences of
different lengths batched in each step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from kiln.builder.build import build_engine
from kiln.builder.engine import load_engine
from kiln.builder.models import BuildConfig
from kiln.runtime.reference import ReferenceBackend
from kiln_testing import TINY_ARCHS, PagedSequences, hf_auto_class, make_tiny_checkpoint

ARCHS = TINY_ARCHS
BUILD = BuildConfig(dtype="float32", max_batch_size=4, max_seq_len=128, max_num_tokens=64,
                    tokens_per_block=4)


@pytest.fixture(scope="module", params=ARCHS)
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    ckpt = make_tiny_checkpoint(request.param, root / "hf", seed=ARCHS.index(request.param))
    build_engine(ckpt, root / "engine", BUILD, progress=False)
    model = hf_auto_class(request.param).from_pretrained(ckpt, dtype=torch.float32).eval()
    return load_engine(root / "engine"), model


def test_engine_matches_huggingface(built):
    engine, model = built
    backend = ReferenceBackend.for_engine(engine, num_blocks=40)
    seqs = PagedSequences(BUILD.tokens_per_block, BUILD.max_blocks_per_seq, 40, seed=3)
    gen = torch.Generator().manual_seed(11)
    for n in (7, 13, 20):
        seqs.add(torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist())
    produced: dict[int, list[tuple[int, torch.Tensor]]] = {0: [], 1: [], 2: []}
    schedule = [[(0, 7), (1, 6), (2, 10)],       # prefill; first chunks of 1 and 2
                [(1, 7), (2, 10), (0, 1)]]       # the chunks' rest, mixed with a decode
    schedule += [[(0, 1), (1, 1), (2, 1)]] * 10  # decodes
    for plan in schedule:
        logits = torch.from_numpy(backend.forward(seqs.step(plan)))
        assert logits.shape == (len(plan), engine.config.model.vocab_size)
        for row, (sid, _) in enumerate(plan):
            if seqs.computed[sid] == len(seqs.tokens[sid]):  # finished its known tokens
                produced[sid].append((seqs.computed[sid] - 1, logits[row]))
                seqs.tokens[sid].append(int(logits[row].argmax()))
    with torch.no_grad():
        assert [len(rows) for rows in produced.values()] == [12, 11, 11]
        for sid, rows in produced.items():
            ref = model(torch.tensor([seqs.tokens[sid]])).logits[0]
            for pos, row in rows:
                torch.testing.assert_close(row, ref[pos], atol=1e-4, rtol=0)
                assert int(row.argmax()) == int(ref[pos].argmax())
            prompt = seqs.tokens[sid][: len(seqs.tokens[sid]) - len(rows)]
            hf = model.generate(torch.tensor([prompt]), max_new_tokens=len(rows), do_sample=False,
                                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                pad_token_id=0)
            # generate stops early if it meets the end id; the tokens up to there must agree.
            assert seqs.tokens[sid][: hf.shape[1]] == hf[0].tolist()


def test_longrope_engine_past_the_pretrained_context_rotates_by_the_long_factors(tmp_path):
    """An engine whose sequences may run past original_max_position_embeddings (128 here)
    rotates every position by the long factors, as HF does for a sequence that long: a prompt
    of 150 tokens, prefilled in chunks, agrees with HF at every position."""
    ckpt = make_tiny_checkpoint("phi3-longrope", tmp_path / "hf", seed=5)
    build = BuildConfig(dtype="float32", max_batch_size=2, max_seq_len=256, max_num_tokens=64,
                        tokens_per_block=4)
    build_engine(ckpt, tmp_path / "engine", build, progress=False)
    engine = load_engine(tmp_path / "engine")
    rope = next(n.attrs for n in engine.graph.nodes if n.op == "attention")["rope"]
    assert rope["scaling"]["factors"] == [1.5, 2.0, 3.0, 4.0, 5.0, 8.0]
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    backend = ReferenceBackend.for_engine(engine, num_blocks=60)
    seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, 60, seed=1)
    tokens = torch.randint(0, 320, (150,), generator=torch.Generator().manual_seed(2)).tolist()
    seqs.add(tokens)
    rows = []
    for start in range(0, 150, 50):
        step = seqs.step([(0, 50)])
        step["last_token_index"] = np.arange(50, dtype=np.int32)
        rows.append(torch.from_numpy(backend.forward(step)))
    with torch.no_grad():
        ref = model(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(torch.cat(rows), ref, atol=1e-4, rtol=0)
