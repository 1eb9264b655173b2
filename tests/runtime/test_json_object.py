"""JSON-object outputs (json_object): the tokens' bytes from the tokenizer, and generation against
HuggingFace's greedy pick among the tokens that continue a JSON object."""
from __future__ import annotations

import json

import pytest

from kiln.runtime.tokenizer import token_bytes
from kiln_testing import hf_json_greedy

TEXTS = ["the object", "a function returns", "class definitions", "In the module"]


def test_byte_level_token_bytes_spell_the_text(hf_and_runner):
    _, runner = hf_and_runner
    hf = runner.tokenizer.hf
    table = token_bytes(hf, runner.vocab_size + 5)
    assert len(table) == runner.vocab_size + 5 and table[-5:] == [b""] * 5
    for special in hf.all_special_ids:
        assert table[special] == b""
    for text in ['{"key": [1, -2.5e3, true, null]}', "caf\u00e9 \u20ac \U0001F600", " \n\ttabs"]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == text.encode()


def test_sentencepiece_token_bytes():
    """A SentencePiece-style tokenizer (word marker, <0xNN> byte pieces) as Llama 2's is."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5,
             "\u2581": 6, "\u2581the": 7, "{": 8, "\u2581\"a\":": 9, "caf": 10}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>")
    assert token_bytes(hf, 12) == [b"", b"", b"", b"\n", b"\xc3", b"\xa9", b" ", b" the", b"{",
                                   b' "a":', b"caf", b""]


def test_token_table_is_made_once(hf_and_runner):
    _, runner = hf_and_runner
    table = runner.tokenizer.token_table(runner.vocab_size)
    assert runner.tokenizer.token_table(runner.vocab_size) is table
    assert len(table) == runner.vocab_size and table[3] == token_bytes(runner.tokenizer.hf, 4)[3]
    with pytest.raises(IndexError, match="past the table"):
        table[runner.vocab_size]


def test_json_object_generation_equals_huggingface(hf_and_runner):
    model, runner = hf_and_runner
    tok = runner.tokenizer
    table = tok.token_table(runner.vocab_size)
    prompts = [tok.encode(t) for t in TEXTS]
    out = runner.generate(prompts, max_new_tokens=40, json_object=True, return_dict=True)
    for i, prompt in enumerate(prompts):
        want, complete = hf_json_greedy(model, table, prompt, 40)
        got = out["output_ids"][i, 0, len(prompt): out["sequence_lengths"][i, 0]].tolist()
        assert got == want, i
        assert out["finish_reasons"][i] == ("stop_words" if complete else "length")
        if complete:  # (cut by the length, the text may end inside a UTF-8 character)
            text = tok.decode(got)
            assert text.encode() == b"".join(table[t] for t in got)
            assert isinstance(json.loads(text), dict)
    # A closing brace pushed up by a logit bias ends each object as soon as it may.
    close = next(t for t in range(runner.vocab_size) if table[t] == b"}")
    out = runner.generate(prompts, max_new_tokens=40, json_object=True, return_dict=True,
                          logit_bias={close: 100.0})
    for i, prompt in enumerate(prompts):
        got = out["output_ids"][i, 0, len(prompt): out["sequence_lengths"][i, 0]].tolist()
        assert out["finish_reasons"][i] == "stop_words" and got[-1] == close
        assert isinstance(json.loads(tok.decode(got)), dict)

