"""The repository's model.py files, run through a stand-in for Triton (tests/runtime/triton_stub)
over the real executor: streamed and whole answers equal ModelRunner.generate, concurrent
requests share one executor, cancellation frees KV blocks, bad requests fail alone."""
from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "triton_stub"))

from stub_server import ServerError, StubTriton  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from kiln.runtime import ModelRunner  # noqa: E402
from kiln.runtime.triton import RepositoryOptions, write_repository  # noqa: E402

TEXTS = ["the object", "a function returns", "class definitions", "In the module",
         "import statement", "the value of", "with the", "exceptions are raised"]


@pytest.fixture(scope="module")
def served(tiny_engine, tmp_path_factory):
    """(stub Triton over the repository, reference ModelRunner on the same engine)."""
    _, engine = tiny_engine("llama")
    repo = write_repository(engine, tmp_path_factory.mktemp("triton") / "repo",
                            RepositoryOptions(device="cpu"))
    with StubTriton(repo) as server, ModelRunner.from_dir(engine, device="cpu") as reference:
        yield server, reference


def engine_runner(server):
    return server.models["kiln"].instance.runner


def strings(*values):
    return np.array([[v.encode() for v in values]], dtype=np.object_)


def one(value, dtype):
    return np.array([[value]], dtype=dtype)


def ensemble_inputs(text, max_tokens, **extra):
    inputs = {"text_input": strings(text), "max_tokens": one(max_tokens, np.int32)}
    for name, value in extra.items():
        dtype = {"stop_words": None, "top_k": np.int32, "end_id": np.int32, "min_tokens": np.int32,
                 "random_seed": np.uint64, "stream": np.bool_, "return_log_probs": np.bool_,
                 "apply_chat_template": np.bool_, "beam_width": np.int32,
                 "early_stopping": np.bool_}.get(name, np.float32)
        if name in ("guided_decoding_guide_type", "guided_decoding_guide"):
            inputs[name] = strings(value)
        else:
            inputs[name] = strings(*value) if name in ("stop_words", "bad_words") else one(value, dtype)
    return inputs


def reference_ids(reference, prompt, n, **kw):
    out = reference.generate([prompt], max_new_tokens=n, end_id=kw.pop("end_id", reference.tokenizer.eos_id),
                             return_dict=True, **kw)
    return out["output_ids"][0, 0, len(prompt): out["sequence_lengths"][0, 0]].tolist(), out


def engine_stream(server, prompt, n, cancelled=None, **extra):
    inputs = {"input_ids": np.array([prompt], dtype=np.int32),
              "request_output_len": one(n, np.int32), "streaming": one(True, np.bool_)}
    for name, value in extra.items():
        inputs[name] = value
    return server.infer("kiln", inputs, cancelled)


def test_concurrent_streams_equal_generate_and_share_one_executor(served):
    server, reference = served
    tok = reference.tokenizer
    prompts = [tok.encode(t) for t in TEXTS]
    lengths = [10 + 2 * i for i in range(len(prompts))]
    expected = [reference_ids(reference, p, n, top_k=1)[0] for p, n in zip(prompts, lengths)]
    results, counts = [None] * len(prompts), [0] * len(prompts)
    start = threading.Barrier(len(prompts))
    before = engine_runner(server).iteration_stats() or {"iteration": -1}

    def go(i):
        start.wait()
        tokens = []
        for out in engine_stream(server, prompts[i], lengths[i]):
            tokens += out["output_ids"][0, 0].tolist()
            counts[i] += 1
            assert out["sequence_length"][0, 0] == len(prompts[i]) + len(tokens)
        results[i] = (tokens, out["finish_reason"][0, 0])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (tokens, reason) in enumerate(results):
        assert tokens == expected[i]
        assert reason == (b"end_id" if len(tokens) < lengths[i] else b"length")
        assert counts[i] >= min(len(tokens), 2)  # streamed, not one response
    steps = engine_runner(server).iteration_stats()["iteration"] - before["iteration"]
    assert steps < sum(len(t) for t, _ in results)  # requests shared steps: inflight batching


def test_ensemble_streams_text_equal_to_generate(served):
    server, reference = served
    tok = reference.tokenizer
    results = [None] * 4

    def go(i):
        chunks = list(server.infer("ensemble", ensemble_inputs(TEXTS[i], 24, stream=True)))
        results[i] = chunks

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, chunks in enumerate(results):
        ids, out = reference_ids(reference, tok.encode(TEXTS[i]), 24)
        assert len(chunks) > 1
        text = b"".join(c["text_output"][0, 0] for c in chunks).decode("utf-8")
        assert text == tok.decode(ids)
        assert [c["finish_reason"][0, 0] for c in chunks[:-1]] == [b"not_finished"] * (len(chunks) - 1)
        assert chunks[-1]["finish_reason"][0, 0] == (b"length" if len(ids) == 24 else b"end_id")


def test_ensemble_whole_answer_sampling_parameters_and_log_probs(served):
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[5])
    sampling = dict(temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
                    presence_penalty=0.3, frequency_penalty=0.2)
    ids, _ = reference_ids(reference, prompt, 16, random_seed=1234, output_log_probs=True, **sampling)
    _, out = reference_ids(reference, prompt, 16, random_seed=1234, output_log_probs=True, **sampling)
    chunks = list(server.infer("ensemble", ensemble_inputs(
        TEXTS[5], 16, random_seed=1234, return_log_probs=True, stream=False, **sampling)))
    assert len(chunks) == 1  # not streaming: one response
    assert chunks[0]["text_output"][0, 0].decode() == tok.decode(ids)
    assert chunks[0]["output_log_probs"][0, 0].tolist() == pytest.approx(out["log_probs"][0], abs=1e-4)
    greedy = list(server.infer("ensemble", ensemble_inputs(TEXTS[5], 16, stream=False)))
    assert greedy[0]["text_output"][0, 0].decode() == tok.decode(reference_ids(reference, prompt, 16, top_k=1)[0])
    assert greedy[0]["output_log_probs"].shape == (1, 1, 0)


def test_chat_template_and_end_id(served):
    server, reference = served
    tok = reference.tokenizer
    ids, _ = reference_ids(reference, tok.chat("hello there"), 12, top_k=1)
    chunks = list(server.infer("ensemble", ensemble_inputs("hello there", 12, apply_chat_template=True)))
    assert b"".join(c["text_output"][0, 0] for c in chunks).decode() == tok.decode(ids)
    prompt = tok.encode(TEXTS[1])
    free, _ = reference_ids(reference, prompt, 12, end_id=-1, top_k=1)
    chunks = list(engine_stream(server, prompt, 12, end_id=one(free[3], np.int32)))
    tokens = [t for c in chunks for t in c["output_ids"][0, 0].tolist()]
    assert tokens == free[: free.index(free[3]) + 1]
    assert chunks[-1]["finish_reason"][0, 0] == b"end_id"
    # min_tokens holds end_id back until then, through the engine model and the ensemble
    held, _ = reference_ids(reference, prompt, 12, end_id=free[3], min_tokens=8, top_k=1)
    assert len(held) >= 8 and free[3] not in held[:8]
    chunks = list(engine_stream(server, prompt, 12, end_id=one(free[3], np.int32),
                                min_tokens=one(8, np.int32)))
    assert [t for c in chunks for t in c["output_ids"][0, 0].tolist()] == held
    chunks = list(server.infer("ensemble", ensemble_inputs(TEXTS[1], 12, end_id=free[3],
                                                           min_tokens=8, stream=False)))
    assert chunks[0]["text_output"][0, 0].decode() == tok.decode(held)


def test_stop_words(served):
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[2])
    free, _ = reference_ids(reference, prompt, 20, end_id=-1, top_k=1)
    stop = free[5:7]
    first = next(i for i in range(len(free) - 1) if free[i: i + 2] == stop)
    # TensorRT-LLM's layout: ids of all words, then each word's end offset, -1 padded.
    absent = next(t for t in range(3, reference.vocab_size) if t not in free)
    stop_list = np.array([[stop + [absent], [2, 3, -1]]], dtype=np.int32)
    tokens, reason = [], None
    for c in engine_stream(server, prompt, 20, end_id=one(-1, np.int32), stop_words_list=stop_list):
        tokens += c["output_ids"][0, 0].tolist()
        reason = c["finish_reason"][0, 0]
    assert tokens == free[: first + 2] and reason == b"stop_words"
    # preprocessing turns stop strings into that layout
    pre = list(server.infer("preprocessing", {"text_input": strings("x"),
                                              "stop_words": strings("the value", "of")}))[0]
    a, b = tok.encode("the value", add_special_tokens=False), tok.encode("of", add_special_tokens=False)
    width = len(a) + len(b)
    assert pre["stop_words_list"].tolist() == [[a + b, [len(a), width] + [-1] * (width - 2)]]
    assert pre["input_ids"].tolist() == [tok.encode("x")]
    assert pre["input_lengths"].tolist() == [[len(tok.encode("x"))]]
    assert pre["bad_words_list"].tolist() == [[[], []]]  # none asked for


def test_bad_words(served):
    """TensorRT-LLM's bad_words_list through the engine model, and bad_words (strings) through
    preprocessing in the ensemble: the words are never generated."""
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[3])
    free, _ = reference_ids(reference, prompt, 12, end_id=-1, top_k=1)
    bad = [[free[2]], [free[5], free[6]]]
    expect, _ = reference_ids(reference, prompt, 12, end_id=-1, top_k=1, bad_words_list=[bad])
    assert free[2] not in expect and expect != free
    layout = np.array([[free[2], free[5], free[6]], [1, 3, -1]], dtype=np.int32)[None]
    tokens = [t for c in engine_stream(server, prompt, 12, end_id=one(-1, np.int32),
                                       bad_words_list=layout)
              for t in c["output_ids"][0, 0].tolist()]
    assert tokens == expect
    at = next(i for i, t in enumerate(free) if i >= 1 and t not in free[:i]
              and tok.encode(tok.decode([t]), add_special_tokens=False) == [t])
    word = tok.decode([free[at]])
    pre = list(server.infer("preprocessing", {"text_input": strings(TEXTS[3]),
                                              "bad_words": strings(word)}))[0]
    assert pre["bad_words_list"].tolist() == [[[free[at]], [1]]]
    expect, _ = reference_ids(reference, prompt, 12, end_id=-1, top_k=1,
                              bad_words_list=[[[free[at]]]])
    chunks = list(server.infer("ensemble", ensemble_inputs(TEXTS[3], 12, end_id=-1,
                                                           bad_words=[word], stream=False)))
    assert chunks[0]["text_output"][0, 0].decode() == tok.decode(expect)


def test_embedding_bias(served):
    """TensorRT-LLM's embedding_bias ([vocab], added to the logits) through the engine model, and
    embedding_bias_words/weights through preprocessing in the ensemble: the same tokens as
    ModelRunner with that logit_bias."""
    server, reference = served
    tok = reference.tokenizer
    vocab = reference.vocab_size
    prompt = tok.encode(TEXTS[5])
    free, _ = reference_ids(reference, prompt, 10, end_id=-1, top_k=1)
    pushed = next(t for t in range(3, vocab) if t not in free)
    logit_bias = {pushed: 30.0, free[1]: -50.0}
    expect, _ = reference_ids(reference, prompt, 10, end_id=-1, top_k=1, logit_bias=logit_bias)
    assert expect != free and pushed in expect
    dense = np.zeros((1, vocab), dtype=np.float32)
    for token, bias in logit_bias.items():
        dense[0, token] = bias
    tokens = [t for c in engine_stream(server, prompt, 10, end_id=one(-1, np.int32),
                                       embedding_bias=dense)
              for t in c["output_ids"][0, 0].tolist()]
    assert tokens == expect
    # A shorter vector biases the ids it covers; an empty one biases nothing.
    short = dense[:, : max(logit_bias) + 1]
    assert [t for c in engine_stream(server, prompt, 10, end_id=one(-1, np.int32),
                                     embedding_bias=short)
            for t in c["output_ids"][0, 0].tolist()] == expect
    assert [t for c in engine_stream(server, prompt, 10, end_id=one(-1, np.int32),
                                     embedding_bias=np.zeros((1, 0), dtype=np.float32))
            for t in c["output_ids"][0, 0].tolist()] == free
    # Preprocessing: each word's weight at each of its tokens (a token in two words gets both).
    at = next(i for i, t in enumerate(free) if i >= 1 and t not in free[:i]
              and tok.encode(tok.decode([t]), add_special_tokens=False) == [t])
    word = tok.decode([free[at]])
    pair = tok.encode("the value", add_special_tokens=False)
    words = np.array([[word.encode(), b"the value", b""]], dtype=np.object_)
    weights = np.array([[-60.0, 2.5, 0.0]], dtype=np.float32)
    pre = list(server.infer("preprocessing", {"text_input": strings(TEXTS[5]),
                                              "embedding_bias_words": words,
                                              "embedding_bias_weights": weights}))[0]
    width = len(server.models["preprocessing"].instance.tokenizer)  # the HF tokenizer's ids
    want = np.zeros((1, width), dtype=np.float32)
    want[0, free[at]] -= 60.0
    for t in pair:
        want[0, t] += 2.5
    assert pre["embedding_bias"].shape == (1, width)
    assert np.array_equal(pre["embedding_bias"], want)
    none = list(server.infer("preprocessing", {"text_input": strings(TEXTS[5])}))[0]
    assert none["embedding_bias"].shape == (1, 0)
    bias = {int(t): float(want[0, t]) for t in np.flatnonzero(want[0])}
    expect, _ = reference_ids(reference, prompt, 10, end_id=-1, top_k=1, logit_bias=bias)
    assert free[at] not in expect
    inputs = ensemble_inputs(TEXTS[5], 10, end_id=-1, stream=False)
    inputs.update(embedding_bias_words=words, embedding_bias_weights=weights)
    chunks = list(server.infer("ensemble", inputs))
    assert chunks[0]["text_output"][0, 0].decode() == tok.decode(expect)


def test_guided_decoding_json(served):
    """TensorRT-LLM's guided_decoding_guide_type "json": the engine model's and the ensemble's
    output is ModelRunner's with json_object; another guide type fails alone."""
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[6])
    expect, out = reference_ids(reference, prompt, 16, end_id=-1, top_k=1, json_object=True)
    assert expect != reference_ids(reference, prompt, 16, end_id=-1, top_k=1)[0]
    chunks = list(engine_stream(server, prompt, 16, end_id=one(-1, np.int32),
                                guided_decoding_guide_type=strings("json")))
    assert [t for c in chunks for t in c["output_ids"][0, 0].tolist()] == expect
    reason = {"stop_words": b"stop_words", "length": b"length"}[out["finish_reasons"][0]]
    assert chunks[-1]["finish_reason"][0, 0] == reason
    whole = list(server.infer("ensemble", ensemble_inputs(TEXTS[6], 16, end_id=-1, stream=False,
                                                          guided_decoding_guide_type="json")))
    assert whole[0]["text_output"][0, 0].decode() == tok.decode(expect)
    with pytest.raises(ServerError, match="guided_decoding_guide_type 'ebnf' is not supported") as err:
        list(engine_stream(server, prompt, 4, guided_decoding_guide_type=strings("ebnf")))
    assert err.value.code == pb_utils.TritonError.INVALID_ARG


def test_guided_decoding_regex(served):
    """guided_decoding_guide_type "regex" with the pattern in guided_decoding_guide: the output
    is ModelRunner's with regex; a pattern kiln cannot enforce fails its request alone."""
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[6])
    pattern = r"(north|south) \d{1,2} km"
    expect, out = reference_ids(reference, prompt, 16, end_id=-1, top_k=1, regex=pattern)
    guide = dict(guided_decoding_guide_type=strings("regex"), guided_decoding_guide=strings(pattern))
    chunks = list(engine_stream(server, prompt, 16, end_id=one(-1, np.int32), **guide))
    assert [t for c in chunks for t in c["output_ids"][0, 0].tolist()] == expect
    assert out["finish_reasons"][0] == "stop_words" and chunks[-1]["finish_reason"][0, 0] == b"stop_words"
    whole = list(server.infer("ensemble", ensemble_inputs(
        TEXTS[6], 16, end_id=-1, stream=False, guided_decoding_guide_type="regex",
        guided_decoding_guide=pattern)))
    assert whole[0]["text_output"][0, 0].decode() == tok.decode(expect)
    for guide, message in (({"guided_decoding_guide_type": strings("regex")},
                            "needs the pattern in guided_decoding_guide"),
                           ({"guided_decoding_guide_type": strings("regex"),
                             "guided_decoding_guide": strings(r"(a)\1")},
                            r"\\1 is not supported")):
        with pytest.raises(ServerError, match=message) as err:
            list(engine_stream(server, prompt, 4, **guide))
        assert err.value.code == pb_utils.TritonError.INVALID_ARG


def test_guided_decoding_ebnf_grammar(served):
    """guided_decoding_guide_type "ebnf_grammar" with the grammar in guided_decoding_guide: the
    output is ModelRunner's with grammar; a grammar kiln cannot enforce fails its request
    alone."""
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[6])
    grammar = 'root ::= dir " " [1-9] [0-9]? " km"\ndir ::= "north" | "south"'
    expect, out = reference_ids(reference, prompt, 16, end_id=-1, top_k=1, grammar=grammar)
    guide = dict(guided_decoding_guide_type=strings("ebnf_grammar"),
                 guided_decoding_guide=strings(grammar))
    chunks = list(engine_stream(server, prompt, 16, end_id=one(-1, np.int32), **guide))
    assert [t for c in chunks for t in c["output_ids"][0, 0].tolist()] == expect
    assert out["finish_reasons"][0] == "stop_words" and chunks[-1]["finish_reason"][0, 0] == b"stop_words"
    whole = list(server.infer("ensemble", ensemble_inputs(
        TEXTS[6], 16, end_id=-1, stream=False, guided_decoding_guide_type="ebnf_grammar",
        guided_decoding_guide=grammar)))
    text = whole[0]["text_output"][0, 0].decode()
    assert text == tok.decode(expect) and re.fullmatch(r"(north|south) [1-9][0-9]? km", text)
    for guide, message in (({"guided_decoding_guide_type": strings("ebnf_grammar")},
                            "needs the grammar in guided_decoding_guide"),
                           ({"guided_decoding_guide_type": strings("ebnf_grammar"),
                             "guided_decoding_guide": strings('root ::= root "a" | "b"')},
                            "rule 'root' is left-recursive")):
        with pytest.raises(ServerError, match=message) as err:
            list(engine_stream(server, prompt, 4, **guide))
        assert err.value.code == pb_utils.TritonError.INVALID_ARG


def test_guided_decoding_json_schema(served):
    """guided_decoding_guide_type "json_schema" with the schema in guided_decoding_guide: the
    engine model's and the ensemble's output is ModelRunner's with json_schema; a schema kiln
    cannot enforce, or none, fails its request alone."""
    import json

    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[6])
    schema = json.dumps({"type": "object", "properties": {"id": {"type": "integer"},
                                                          "on": {"type": "boolean"}},
                         "required": ["on", "id"]})
    expect, out = reference_ids(reference, prompt, 16, end_id=-1, top_k=1, json_schema=schema)
    guide = dict(guided_decoding_guide_type=strings("json_schema"),
                 guided_decoding_guide=strings(schema))
    chunks = list(engine_stream(server, prompt, 16, end_id=one(-1, np.int32), **guide))
    assert [t for c in chunks for t in c["output_ids"][0, 0].tolist()] == expect
    reason = {"stop_words": b"stop_words", "length": b"length"}[out["finish_reasons"][0]]
    assert chunks[-1]["finish_reason"][0, 0] == reason
    whole = list(server.infer("ensemble", ensemble_inputs(
        TEXTS[6], 16, end_id=-1, stream=False, guided_decoding_guide_type="json_schema",
        guided_decoding_guide=schema)))
    assert whole[0]["text_output"][0, 0].decode() == tok.decode(expect)
    for guide, message in (({"guided_decoding_guide_type": strings("json_schema")},
                            "needs the schema in guided_decoding_guide"),
                           ({"guided_decoding_guide_type": strings("json_schema"),
                             "guided_decoding_guide": strings('{"type": "string"}')},
                            "the top-level schema must describe an object or an array")):
        with pytest.raises(ServerError, match=message) as err:
            list(engine_stream(server, prompt, 4, **guide))
        assert err.value.code == pb_utils.TritonError.INVALID_ARG


def test_beam_search(served):
    """beam_width (TensorRT-LLM's) through the engine model and the ensemble: one answer with
    every beam, best first, equal to ModelRunner's beam search (tokens, lengths, cumulative and
    per-token log-probabilities, texts); streaming is refused."""
    server, reference = served
    tok = reference.tokenizer
    prompt = tok.encode(TEXTS[6])
    want = reference.generate([prompt], max_new_tokens=10, num_beams=3, length_penalty=0.8,
                              early_stopping=False, end_id=tok.eos_id, output_log_probs=True,
                              return_dict=True)
    lengths = want["sequence_lengths"][0].tolist()
    beams = [want["output_ids"][0, b, len(prompt): n].tolist() for b, n in enumerate(lengths)]
    (out,) = list(engine_stream(server, prompt, 10, streaming=one(False, np.bool_),
                                beam_width=one(3, np.int32), len_penalty=one(0.8, np.float32),
                                early_stopping=one(False, np.bool_),
                                return_log_probs=one(True, np.bool_)))
    assert out["output_ids"].shape == (1, 3, max(len(b) for b in beams))
    assert out["output_lengths"][0].tolist() == [len(b) for b in beams]
    assert [row[:n].tolist() for row, n in zip(out["output_ids"][0], out["output_lengths"][0])] \
        == beams
    assert out["sequence_length"][0].tolist() == lengths
    assert out["cum_log_probs"][0].tolist() == pytest.approx(want["cum_log_probs"][0], abs=1e-5)
    for row, n, lps in zip(out["output_log_probs"][0], out["output_lengths"][0],
                           want["log_probs"][0]):
        assert row[:n].tolist() == pytest.approx(lps, abs=1e-5)
    (text,) = list(server.infer("ensemble", ensemble_inputs(
        TEXTS[6], 10, beam_width=3, length_penalty=0.8, early_stopping=False, stream=False)))
    assert [t.decode() for t in text["text_output"][0]] == [tok.decode(b) for b in beams]
    assert text["cum_log_probs"][0].tolist() == pytest.approx(want["cum_log_probs"][0], abs=1e-5)
    assert text["finish_reason"].shape == (1, 3) and text["output_log_probs"].shape == (1, 3, 0)
    with pytest.raises(ServerError, match="beam search answers once"):
        list(engine_stream(server, prompt, 4, beam_width=one(2, np.int32)))


def test_bad_embedding_bias_fails_alone(served):
    server, reference = served
    vocab = reference.vocab_size
    prompt = [5, 6, 7]
    with pytest.raises(ServerError, match=f"{vocab + 1} entries but the model's vocabulary has "
                                          f"{vocab} tokens") as err:
        list(engine_stream(server, prompt, 4,
                           embedding_bias=np.ones((1, vocab + 1), dtype=np.float32)))
    assert err.value.code == pb_utils.TritonError.INVALID_ARG
    huge = np.zeros((1, vocab), dtype=np.float32)
    huge[0, 7] = -np.inf
    with pytest.raises(ServerError, match=r"embedding_bias\[7\] is -inf but each bias must lie "
                                          r"within \[-100, 100\]"):
        list(engine_stream(server, prompt, 4, embedding_bias=huge))
    with pytest.raises(ServerError, match="2 embedding_bias_words but 1 embedding_bias_weights"):
        list(server.infer("preprocessing", {
            "text_input": strings("x"), "embedding_bias_words": strings("a", "b"),
            "embedding_bias_weights": np.array([[1.0]], dtype=np.float32)}))
    with pytest.raises(ServerError, match="go together"):
        list(server.infer("preprocessing", {"text_input": strings("x"),
                                            "embedding_bias_words": strings("a")}))
    assert reference_ids(reference, prompt, 4, top_k=1)[0] == [
        t for c in engine_stream(server, prompt, 4) for t in c["output_ids"][0, 0].tolist()]
    assert server.models["kiln"].instance.streams == {}


def wait_for_free_blocks(runner, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = runner.kv_cache_stats()
        if stats["used_blocks"] == 0:
            return stats
        time.sleep(0.01)
    return runner.kv_cache_stats()


@pytest.mark.parametrize("model", ["kiln", "ensemble"])
def test_cancellation_stops_generation_and_frees_blocks(served, model):
    server, _ = served
    runner = engine_runner(server)
    cancelled = threading.Event()
    if model == "kiln":  # the error can only come from the engine model noticing
        stream = engine_stream(server, [9, 8, 7, 6], 100, cancelled, end_id=one(-1, np.int32))
    else:
        stream = server.infer("ensemble", ensemble_inputs(TEXTS[0], 100, stream=True, end_id=-1),
                              cancelled)
    tokens = 0
    with pytest.raises(ServerError) as err:
        for out in stream:
            tokens += out["output_ids"].shape[2] if model == "kiln" else 1
            if tokens >= 3:
                cancelled.set()
    assert err.value.code == pb_utils.TritonError.CANCELLED
    assert tokens < 100
    stats = wait_for_free_blocks(runner)
    assert stats["used_blocks"] == 0 and stats["free_blocks"] == stats["total_blocks"]
    # The model's response thread drops the stream once it has seen the final response.
    instance = server.models["kiln"].instance
    deadline = time.monotonic() + 10
    while instance.streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert instance.streams == {}


@pytest.mark.parametrize("bad, message", [
    (dict(text="", n=4), "input_token_ids is empty"),
    (dict(n=0), "max_new_tokens is 0"),
    (dict(temperature=-1.0), "temperature is -1"),
    (dict(top_p=1.5, temperature=1.0), "top_p is 1.5"),
    (dict(text="the " * 200), "max_seq_len is 128"),
    (dict(end_id=100000), "end_id is 100000, outside the vocabulary"),
])
def test_bad_requests_fail_alone(served, bad, message):
    server, reference = served
    tok = reference.tokenizer
    good_out = {}
    good = threading.Thread(target=lambda: good_out.update(chunks=list(
        server.infer("ensemble", ensemble_inputs(TEXTS[3], 30, stream=True)))))
    good.start()
    extra = {k: v for k, v in bad.items() if k not in ("text", "n")}
    with pytest.raises(ServerError, match=message) as err:
        list(server.infer("ensemble", ensemble_inputs(bad.get("text", TEXTS[1]), bad.get("n", 8),
                                                      stream=True, **extra)))
    assert err.value.code == pb_utils.TritonError.INVALID_ARG
    good.join()
    ids, _ = reference_ids(reference, tok.encode(TEXTS[3]), 30, top_k=1)
    assert b"".join(c["text_output"][0, 0] for c in good_out["chunks"]).decode() == tok.decode(ids)


def test_malformed_engine_inputs_fail_alone(served):
    server, reference = served
    prompt = [5, 6, 7]
    with pytest.raises(ServerError, match=r"one sequence per request.*\[2, 3\]"):
        list(server.infer("kiln", {"input_ids": np.array([prompt, prompt], dtype=np.int32),
                                   "request_output_len": np.array([[4], [4]], dtype=np.int32)}))
    with pytest.raises(ServerError, match="offsets"):
        list(engine_stream(server, prompt, 4,
                           stop_words_list=np.array([[[5, 6], [3, -1]]], dtype=np.int32)))
    with pytest.raises(ServerError, match="input_lengths is 9"):
        list(engine_stream(server, prompt, 4, input_lengths=one(9, np.int32)))
    tokens = [t for c in engine_stream(server, prompt + [0, 0], 4, input_lengths=one(3, np.int32))
              for t in c["output_ids"][0, 0].tolist()]
    assert tokens == reference_ids(reference, prompt, 4, top_k=1)[0]
    assert server.models["kiln"].instance.streams == {}


def test_unloading_ends_requests_in_flight(tiny_engine, tmp_path):
    _, engine = tiny_engine("llama")
    repo = write_repository(engine, tmp_path / "repo", RepositoryOptions(device="cpu"))
    server = StubTriton(repo)
    seen, errors = [], []

    def go():
        try:
            for out in engine_stream(server, [5, 6, 7], 100, end_id=one(-1, np.int32)):
                seen.append(out)
        except ServerError as e:
            errors.append(e)

    client = threading.Thread(target=go)
    client.start()
    while not seen:
        time.sleep(0.005)
    server.close()  # Triton unloads the model: finalize()
    client.join(timeout=10)
    assert not client.is_alive()
    assert len(seen) < 100 and errors and errors[0].code == pb_utils.TritonError.CANCELLED


def test_a_sender_refuses_to_send_after_final():
    sent = []
    sender = pb_utils.InferenceResponseSender(lambda r, f: sent.append(f), threading.Event())
    sender.send(pb_utils.InferenceResponse(), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb_utils.TritonModelException, match="closed"):
        sender.send(pb_utils.InferenceResponse())
    assert sent == [pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL]
