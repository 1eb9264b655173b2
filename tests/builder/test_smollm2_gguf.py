"""The bundled SmolLM2-135M GGUF builds, and its greedy continuations equal transformers
loading the same GGUF."""
from __future__ import annotations

import pytest
import torch
import transformers

from kiln.builder.engine import load_engine
from kiln.runtime.reference import ReferenceBackend
from kiln_testing import PagedSequences

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Water boils at a temperature of"]
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def smol(smollm2):
    engine_dir, model, tokenizer = smollm2
    return load_engine(engine_dir), model, tokenizer


def test_config_and_tokenizer(smol):
    engine, model, tokenizer = smol
    m = engine.config.model
    assert (m.architecture, m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads,
            m.vocab_size, m.tie_word_embeddings) == ("LlamaForCausalLM", 30, 576, 9, 3, 49152, True)
    ours = transformers.AutoTokenizer.from_pretrained(engine.tokenizer_dir)
    for text in PROMPTS:
        assert ours(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert ours.chat_template


def test_greedy_continuations_equal_transformers(smol):
    engine, model, tokenizer = smol
    backend = ReferenceBackend.for_engine(engine, num_blocks=64)
    b = engine.config.build
    seqs = PagedSequences(b.tokens_per_block, b.max_blocks_per_seq, 64)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    for ids in prompts:
        seqs.add(ids)
    plan = [(i, len(ids)) for i, ids in enumerate(prompts)]
    for _ in range(NEW_TOKENS):
        logits = backend.forward(seqs.step(plan))
        for row, (sid, _) in enumerate(plan):
            seqs.tokens[sid].append(int(logits[row].argmax()))
        plan = [(sid, 1) for sid in range(len(prompts))]
    with torch.no_grad():
        for sid, ids in enumerate(prompts):
            hf = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            # generate stops early if it meets the end id; the tokens up to there must agree.
            assert seqs.tokens[sid][: hf.shape[1]] == hf[0].tolist(), tokenizer.decode(seqs.tokens[sid])
            ours = torch.tensor([seqs.tokens[sid]])
            ref = model(ours).logits[0, len(ids) - 1: -1].argmax(-1)
            assert ref.tolist() == seqs.tokens[sid][len(ids):]
