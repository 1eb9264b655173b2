"""Incremental detokenization: streamed deltas add up to decode(all tokens) for random token
streams cut at random places; stop strings cut the text and never leak part-way."""
from __future__ import annotations

import random

import pytest

from kiln.runtime.serve.detokenizer import CONTEXT_TOKENS, TextStream, text_delta
from kiln_testing import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def decoder(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def random_cuts(rng, n):
    cuts, i = [], 0
    while i < n:
        step = rng.choice([1, 1, 1, 2, 3, 5])
        cuts.append((i, min(n, i + step)))
        i += step
    return cuts


@pytest.mark.parametrize("seed", range(6))
def test_deltas_add_up_to_the_whole_decode(tokenizer, seed):
    rng = random.Random(seed)
    decode = decoder(tokenizer)
    # random ids make plenty of split and invalid UTF-8; some real text too
    ids = [rng.randrange(tokenizer.vocab_size) for _ in range(120)]
    ids[40:40] = tokenizer("naïve café — 東京 🙂 done", add_special_tokens=False)["input_ids"]
    out = ""
    for a, b in random_cuts(rng, len(ids)):
        out += text_delta(decode, ids[max(0, a - CONTEXT_TOKENS): a], ids[a:b], final=b == len(ids))
    assert out == decode(ids)


def test_a_split_character_is_held_back_until_complete(tokenizer):
    decode = decoder(tokenizer)
    vocab, spelled = tokenizer.get_vocab(), _bytes_to_unicode()
    singles = [vocab[spelled[b]] for b in "東".encode("utf-8")]  # one token per byte
    assert decode(singles) == "東"
    assert text_delta(decode, [], singles[:1], final=False) == ""
    assert text_delta(decode, singles[:1], singles[1:2], final=False) == ""
    assert text_delta(decode, singles[:2], singles[2:], final=False) == "東"
    assert text_delta(decode, [], singles[:2], final=True) == "\ufffd"  # the end: nothing to wait for


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (what ByteLevel tokens are spelled with)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, (chr(c) for c in cs)))
    return [table[b] for b in range(256)]


def feed(stream, ids, cuts):
    sent = []
    for a, b in cuts:
        sent.append(stream.add(ids[a:b], final=b == len(ids)))
        if stream.stopped:
            break
    return sent


@pytest.mark.parametrize("seed", range(4))
def test_stop_strings_cut_at_the_first_match_and_never_leak(tokenizer, seed):
    rng = random.Random(100 + seed)
    decode = decoder(tokenizer)
    text = "the value of the object is returned by the function call"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stop = ["by the", "never"]
    sent = feed(TextStream(decode, stop), ids, random_cuts(rng, len(ids)))
    assert "".join(sent) == "the value of the object is returned "
    for i in range(len(sent)):  # no prefix of what was sent ever ended in part of a stop string
        so_far = "".join(sent[: i + 1])
        assert "by the" not in so_far and not so_far.endswith(("b", "by", "by ", "by t", "by th"))


def test_no_stop_string_streams_everything(tokenizer):
    decode = decoder(tokenizer)
    ids = tokenizer("a b c d e f", add_special_tokens=False)["input_ids"]
    stream = TextStream(decode, ["zzz"])
    sent = feed(stream, ids, [(i, i + 1) for i in range(len(ids))])
    assert "".join(sent) == "a b c d e f" and not stream.stopped
    stream = TextStream(decode, ["f"])
    assert "".join(feed(stream, ids, [(0, len(ids))])) == "a b c d e " and stream.stopped


@pytest.mark.parametrize("seed", range(3))
def test_min_tokens_lets_stop_strings_count_only_from_that_token(tokenizer, seed):
    """A stop string that ends before the min_tokens-th token is text like any other; the first
    that ends in it or later cuts the answer, however the tokens arrive."""
    rng = random.Random(200 + seed)
    decode = decoder(tokenizer)
    ids = tokenizer("one stop two stop three stop four", add_special_tokens=False)["input_ids"]
    ends = [i + 1 for i in range(len(ids)) if decode(ids[: i + 1]).count("stop") >
            decode(ids[:i]).count("stop")]  # tokens up to the end of each "stop"
    assert len(ends) == 3
    for min_tokens, expect in ((0, "one "), (ends[0], "one "), (ends[0] + 1, "one stop two "),
                               (ends[1], "one stop two "), (ends[2] + 1, None)):
        stream = TextStream(decode, ["stop"], min_tokens)
        sent = "".join(feed(stream, ids, random_cuts(rng, len(ids))))
        assert sent == (decode(ids) if expect is None else expect), min_tokens
        assert stream.stopped == (expect is not None)


@pytest.mark.parametrize("seed", range(3))
def test_include_stop_keeps_the_stop_string_and_drops_what_follows(tokenizer, seed):
    rng = random.Random(300 + seed)
    decode = decoder(tokenizer)
    ids = tokenizer("the value of the object is returned by the function call",
                    add_special_tokens=False)["input_ids"]
    stream = TextStream(decode, ["by the", "by", "never"], include_stop=True)
    assert "".join(feed(stream, ids, random_cuts(rng, len(ids)))) == \
        "the value of the object is returned by the"
    assert stream.stopped
    stream = TextStream(decode, ["the"], min_tokens=3, include_stop=True)
    assert "".join(feed(stream, ids, random_cuts(rng, len(ids)))) == "the value of the"
