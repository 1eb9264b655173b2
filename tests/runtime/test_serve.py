"""engine-serve's app on loopback, driven by the `openai` client: answers equal
ModelRunner.generate; 64 concurrent streams complete; disconnects cancel; bad requests get
their 4xx; /metrics is Prometheus text."""
from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from kiln.runtime import ModelRunner
from kiln.runtime.serve.app import create_app

TEXTS = ["the object", "a function returns", "class definitions", "In the module",
         "import statement", "the value of", "with the", "exceptions are raised"]


class LiveServer:
    """The app under uvicorn on 127.0.0.1, on a free port, in a thread."""

    def __init__(self, runner, **kw) -> None:
        self.app = create_app(runner, model_name="tiny", **kw)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def state(self):
        return self.app.state.server

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def runners(tiny_engine):
    _, engine = tiny_engine("llama")
    with ModelRunner.from_dir(engine, device="cpu") as served, \
            ModelRunner.from_dir(engine, device="cpu") as reference:
        yield served, reference


@pytest.fixture(scope="module")
def live(runners):
    with LiveServer(runners[0]) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)


def generated(reference, prompt, n, **kw):
    """Reference tokens: ModelRunner.generate, stopping at the tokenizer's end id."""
    kw.setdefault("top_k", 1)
    out = reference.generate([prompt], max_new_tokens=n, end_id=reference.tokenizer.eos_id,
                             return_dict=True, **kw)
    return out["output_ids"][0, 0, len(prompt): out["sequence_lengths"][0, 0]].tolist(), out


def reason(ids, n):
    return "length" if len(ids) == n else "stop"


def wait_until_idle(runner, live, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.kv_cache_stats()["used_blocks"] == 0 and live.state.engine.in_flight == 0:
            return True
        time.sleep(0.01)
    return False


def test_completions_equal_generate(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    ids, _ = generated(ref, tok.encode(TEXTS[0]), 14)
    out = client.completions.create(model="tiny", prompt=TEXTS[0], max_tokens=14, temperature=0)
    assert out.choices[0].text == tok.decode(ids)
    assert out.choices[0].finish_reason == reason(ids, 14)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(tok.encode(TEXTS[0])), len(ids))
    prompt = tok.encode(TEXTS[1])  # token ids in, a batch of prompts
    ids1, _ = generated(ref, prompt, 10)
    out = client.completions.create(model="tiny", prompt=[prompt, tok.encode(TEXTS[0])],
                                    max_tokens=10, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text == tok.decode(ids1)
    assert out.choices[1].text == tok.decode(generated(ref, tok.encode(TEXTS[0]), 10)[0])


def test_completions_stream_equal_generate(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    ids, _ = generated(ref, tok.encode(TEXTS[2]), 20)
    chunks = list(client.completions.create(model="tiny", prompt=TEXTS[2], max_tokens=20,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) > 2
    assert "".join(c.choices[0].text for c in text_chunks) == tok.decode(ids)
    assert [c.choices[0].finish_reason for c in text_chunks[:-1]] == [None] * (len(text_chunks) - 1)
    assert text_chunks[-1].choices[0].finish_reason == reason(ids, 20)
    assert chunks[-1].usage.completion_tokens == len(ids)


def test_chat_equal_generate(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    prompt = tok.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    ids, _ = generated(ref, prompt, 16)
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == tok.decode(ids)
    assert out.usage.prompt_tokens == len(prompt)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == tok.decode(ids)
    assert chunks[-1].choices[0].finish_reason == reason(ids, 16)
    # no max_tokens: up to the context limit
    ids, _ = generated(ref, tok.chat("hi"), ref.max_seq_len - len(tok.chat("hi")))
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                         temperature=0)
    assert out.choices[0].message.content == tok.decode(ids)


def test_seeded_sampling_n_and_log_probs(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    prompt = tok.encode(TEXTS[3])
    kw = dict(temperature=0.9, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
              presence_penalty=0.3, frequency_penalty=0.2)
    out = ref.generate([prompt, prompt], max_new_tokens=12, end_id=tok.eos_id, top_k=30,
                       random_seed=7, output_log_probs=True, return_dict=True, **kw)
    expected = [out["output_ids"][i, 0, len(prompt): out["sequence_lengths"][i, 0]].tolist()
                for i in range(2)]
    res = client.completions.create(
        model="tiny", prompt=TEXTS[3], max_tokens=12, n=2, seed=7, logprobs=1,
        temperature=kw["temperature"], top_p=kw["top_p"], presence_penalty=kw["presence_penalty"],
        frequency_penalty=kw["frequency_penalty"],
        extra_body={"top_k": 30, "min_p": kw["min_p"], "repetition_penalty": kw["repetition_penalty"]})
    assert [c.text for c in res.choices] == [tok.decode(e) for e in expected]
    for i, c in enumerate(res.choices):
        assert c.logprobs.token_logprobs == pytest.approx(out["log_probs"][i], abs=1e-4)
        assert c.logprobs.tokens == [tok.decode([t]) for t in expected[i]]
    assert res.usage.prompt_tokens == len(prompt)  # counted once for n samples
    # a negative seed is a seed too (modulo 2**64), as the runner takes it
    out = ref.generate([prompt], max_new_tokens=6, end_id=tok.eos_id, top_k=30, random_seed=-3,
                       return_dict=True, **kw)
    res = client.completions.create(
        model="tiny", prompt=TEXTS[3], max_tokens=6, seed=-3, temperature=kw["temperature"],
        top_p=kw["top_p"], presence_penalty=kw["presence_penalty"],
        frequency_penalty=kw["frequency_penalty"],
        extra_body={"top_k": 30, "min_p": kw["min_p"], "repetition_penalty": kw["repetition_penalty"]})
    assert res.choices[0].text == tok.decode(
        out["output_ids"][0, 0, len(prompt): out["sequence_lengths"][0, 0]].tolist())
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                          max_tokens=5, temperature=0, logprobs=True)
    ids, g = generated(ref, tok.chat("x"), 5, output_log_probs=True)
    assert [e.logprob for e in chat.choices[0].logprobs.content] == pytest.approx(g["log_probs"][0], abs=1e-4)


def test_top_logprobs_list_the_most_likely_tokens(client, runners):
    """Completions' logprobs=k and chat's top_logprobs: at each token its k most likely ones,
    as the reference runner lists them."""
    _, ref = runners
    tok = ref.tokenizer
    ids, g = generated(ref, tok.encode(TEXTS[2]), 6, output_log_probs=True, top_log_probs=3)
    tops = g["top_log_probs"][0]
    out = client.completions.create(model="tiny", prompt=TEXTS[2], max_tokens=6, temperature=0,
                                    logprobs=3)
    lp = out.choices[0].logprobs
    assert lp.tokens == [tok.decode([t]) for t in ids]
    for i, top in enumerate(lp.top_logprobs):
        want = {}
        for t, v in tops[i]:  # tokens that read the same: the most likely one
            want.setdefault(tok.decode([t]), v)
        assert top.keys() == want.keys() and lp.tokens[i] in top
        assert [top[k] for k in want] == pytest.approx(list(want.values()), abs=1e-4)
    chunks = list(client.completions.create(model="tiny", prompt=TEXTS[2], max_tokens=6,
                                            temperature=0, logprobs=3, stream=True))
    # Streamed, the same within rounding: a second request of the prompt can reuse its cached
    # blocks and computes only its last token again, in a step of another shape.
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.top_logprobs]
    assert [s.keys() for s in streamed] == [t.keys() for t in lp.top_logprobs]
    for s, t in zip(streamed, lp.top_logprobs):
        assert s == pytest.approx(t, abs=1e-5)
    ids, g = generated(ref, tok.chat("x"), 5, output_log_probs=True, top_log_probs=2)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                          max_tokens=5, temperature=0, logprobs=True,
                                          top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert [[(a.token, round(a.logprob, 4)) for a in e.top_logprobs] for e in content] == [
        [(tok.decode([t]), round(v, 4)) for t, v in top] for top in g["top_log_probs"][0]]
    assert all(e.top_logprobs[0].token == e.token for e in content)


def test_stop_strings_cut_the_text(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    ids, _ = generated(ref, tok.encode(TEXTS[4]), 30)
    full = tok.decode(ids)
    stop = next(full[i: i + 2] for i in range(4, len(full) - 2) if full[i: i + 2].isprintable()
                and full[i: i + 2].strip() and "\ufffd" not in full[i: i + 2])
    expect = full[: full.index(stop)]
    out = client.completions.create(model="tiny", prompt=TEXTS[4], max_tokens=30, temperature=0,
                                    stop=[stop, "never-there"])
    assert (out.choices[0].text, out.choices[0].finish_reason) == (expect, "stop")
    chunks = list(client.completions.create(model="tiny", prompt=TEXTS[4], max_tokens=30,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expect
    assert chunks[-1].choices[0].finish_reason == "stop"
    # vLLM's include_stop_str_in_output: the stop string stays, what follows it goes
    kept = {"include_stop_str_in_output": True}
    out = client.completions.create(model="tiny", prompt=TEXTS[4], max_tokens=30, temperature=0,
                                    stop=[stop, "never-there"], extra_body=kept)
    assert (out.choices[0].text, out.choices[0].finish_reason) == (expect + stop, "stop")
    chunks = list(client.completions.create(model="tiny", prompt=TEXTS[4], max_tokens=30,
                                            temperature=0, stop=stop, stream=True,
                                            extra_body=kept))
    assert "".join(c.choices[0].text for c in chunks) == expect + stop


def test_truncate_prompt_tokens_keeps_the_last_ones(client, runners):
    """vLLM's truncate_prompt_tokens: the answer to each prompt's last k tokens; -1 keeps
    what the context holds."""
    _, ref = runners
    tok = ref.tokenizer
    prompt = tok.encode(TEXTS[6] + " " + TEXTS[7])
    k = len(prompt) // 2
    expect, _ = generated(ref, prompt[-k:], 10)
    out = client.completions.create(model="tiny", prompt=TEXTS[6] + " " + TEXTS[7], max_tokens=10,
                                    temperature=0, extra_body={"truncate_prompt_tokens": k})
    assert out.choices[0].text == tok.decode(expect)
    assert out.usage.prompt_tokens == k
    whole, _ = generated(ref, prompt, 10)
    out = client.completions.create(model="tiny", prompt=TEXTS[6] + " " + TEXTS[7], max_tokens=10,
                                    temperature=0, extra_body={"truncate_prompt_tokens": -1})
    assert out.choices[0].text == tok.decode(whole) and out.usage.prompt_tokens == len(prompt)


def test_allowed_token_ids_restrict_the_answer(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    prompt = tok.encode(TEXTS[3])
    ids, _ = generated(ref, prompt, 10)
    allowed = sorted({ids[2], ids[6], 40, 41} - {ids[0]})
    expect, _ = generated(ref, prompt, 10, allowed_token_ids=allowed)
    assert set(expect) <= set(allowed)
    out = client.completions.create(model="tiny", prompt=TEXTS[3], max_tokens=10, temperature=0,
                                    extra_body={"allowed_token_ids": allowed})
    assert out.choices[0].text == tok.decode(expect)


def test_skip_special_tokens_false_keeps_them_in_the_text(client, runners):
    """End of text forced (a logit bias, ignore_eos) is left out of the text by default and
    spelled out with skip_special_tokens=false."""
    _, ref = runners
    tok = ref.tokenizer
    eos = tok.eos_id
    spelled = tok.hf.convert_ids_to_tokens(eos)
    assert eos in tok.hf.all_special_ids and spelled
    body = dict(model="tiny", prompt=TEXTS[1], max_tokens=3, temperature=0)
    extra = {"ignore_eos": True, "logit_bias": {str(eos): 100}}
    out = client.completions.create(**body, extra_body=extra)
    assert out.choices[0].text == "" and out.usage.completion_tokens == 3
    out = client.completions.create(**body, extra_body=extra | {"skip_special_tokens": False})
    assert out.choices[0].text == spelled * 3
    chunks = list(client.completions.create(**body, stream=True,
                                            extra_body=extra | {"skip_special_tokens": False}))
    assert "".join(c.choices[0].text for c in chunks) == spelled * 3


def test_echo_puts_the_prompt_before_the_answer(client, runners):
    _, ref = runners
    tok = ref.tokenizer
    answers = [tok.decode(generated(ref, tok.encode(t), 6)[0]) for t in TEXTS[:2]]
    body = dict(model="tiny", max_tokens=6, temperature=0, echo=True)
    out = client.completions.create(prompt=TEXTS[:2], **body)
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [
        t + a for t, a in zip(TEXTS[:2], answers)]
    assert out.usage.prompt_tokens == sum(len(tok.encode(t)) for t in TEXTS[:2])
    chunks = list(client.completions.create(prompt=TEXTS[0], stream=True, **body))
    assert chunks[0].choices[0].text == TEXTS[0]
    assert "".join(c.choices[0].text for c in chunks) == TEXTS[0] + answers[0]
    ids = tok.encode(TEXTS[1])
    out = client.completions.create(prompt=ids, **body)  # token ids: their text
    assert out.choices[0].text == tok.decode(ids) + answers[1]


def test_echo_with_logprobs_scores_the_prompt(client, live, runners):
    """echo with logprobs (how lm-evaluation-harness scores a continuation over the completions
    API): the prompt's tokens listed first, the first unscored, the rest scored as
    ModelRunner's prompt_log_probs scores them; streamed, in the choice's first chunk."""
    _, ref = runners
    tok = ref.tokenizer
    ids = tok.encode(TEXTS[3])
    gen, want = generated(ref, ids, 5, prompt_log_probs=2, output_log_probs=True, top_log_probs=2)
    body = dict(model="tiny", prompt=ids, max_tokens=5, temperature=0, echo=True, logprobs=2)
    lp = client.completions.create(**body).choices[0].logprobs
    texts = [tok.decode([t]) for t in ids + gen]
    assert lp.tokens == texts
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want["prompt_log_probs"][0] + want["log_probs"][0],
                                                  abs=1e-5)
    scores = [None] + want["prompt_log_probs"][0] + want["log_probs"][0]
    for i, top in enumerate(want["prompt_top_log_probs"][0] + want["top_log_probs"][0], start=1):
        expected = {}  # tokens that read the same: the most likely one's
        for text, value in [(tok.decode([t]), v) for t, v in top] + [(texts[i], scores[i])]:
            expected.setdefault(text, value)
        assert lp.top_logprobs[i] == pytest.approx(expected, abs=1e-5)
    assert lp.text_offset == [sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    chunks = list(client.completions.create(**body, stream=True))
    first = chunks[0].choices[0]
    assert first.text == tok.decode(ids) and first.logprobs.tokens == texts[: len(ids)]
    assert first.logprobs.token_logprobs[1:] == pytest.approx(want["prompt_log_probs"][0], abs=1e-5)
    assert "".join(c.choices[0].text for c in chunks) == tok.decode(ids + gen)
    streamed = 0  # each chunk's offsets start where the text streamed before it ends
    for chunk in chunks:
        choice = chunk.choices[0]
        if choice.logprobs and choice.logprobs.tokens:
            assert choice.logprobs.text_offset == [
                streamed + sum(len(t) for t in choice.logprobs.tokens[:i])
                for i in range(len(choice.logprobs.tokens))]
        streamed += len(choice.text)
    assert wait_until_idle(runners[0], live)


def test_completion_logprobs_give_each_token_its_text_offset(client, runners):
    """OpenAI's text_offset without echo: where each generated token's text starts in the
    answer (vLLM's count, by the tokens' texts)."""
    _, ref = runners
    tok = ref.tokenizer
    lp = client.completions.create(model="tiny", prompt=TEXTS[2], max_tokens=6, temperature=0,
                                   logprobs=0).choices[0].logprobs
    assert len(lp.tokens) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]


def test_prompt_logprobs_as_vllm_lists_them(live, runners):
    """vLLM's prompt_logprobs: null, then per prompt token {id: {logprob, rank,
    decoded_token}} for it and the k most likely there; a choice's for completions, the
    response's for chat."""
    _, ref = runners
    tok = ref.tokenizer
    ids = tok.encode(TEXTS[2])
    _, want = generated(ref, ids, 2, prompt_log_probs=3)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        out = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 2,
                                                 "temperature": 0, "prompt_logprobs": 3}).json()
    got = out["choices"][0]["prompt_logprobs"]
    assert got[0] is None and len(got) == len(ids)
    for i, here in enumerate(got[1:]):
        token = str(ids[i + 1])
        assert here[token]["logprob"] == pytest.approx(want["prompt_log_probs"][0][i], abs=1e-5)
        assert here[token]["decoded_token"] == tok.decode([ids[i + 1]])
        top = want["prompt_top_log_probs"][0][i]
        assert here[token]["rank"] == next((r for r, (t, _) in enumerate(top, 1)
                                            if str(t) == token), here[token]["rank"])
        assert here[token]["rank"] >= 1 and (here[token]["rank"] > 3) == (token not in
                                                                          {str(t) for t, _ in top})
        for rank, (t, value) in enumerate(top, start=1):
            assert here[str(t)]["logprob"] == pytest.approx(value, abs=1e-5)
            assert here[str(t)]["rank"] == rank
        assert len(here) == 3 + (here[token]["rank"] > 3)
    assert "prompt_logprobs" not in http_post(live, "/v1/completions", {
        "prompt": ids, "max_tokens": 1})["choices"][0]
    chat = http_post(live, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": TEXTS[2]}], "max_tokens": 2,
        "prompt_logprobs": 0})
    scored = chat["prompt_logprobs"]
    assert scored[0] is None and all(len(here) == 1 for here in scored[1:])
    assert wait_until_idle(runners[0], live)


def test_beam_search_returns_the_beams_as_choices(client, live, runners):
    """vLLM's use_beam_search: n beams of one search per prompt, best first, as the n choices,
    equal to ModelRunner's beams."""
    _, ref = runners
    tok = ref.tokenizer
    ids = [tok.encode(t) for t in TEXTS[4:6]]
    want = ref.generate(ids, max_new_tokens=6, end_id=tok.eos_id, num_beams=3,
                        length_penalty=0.5, return_dict=True, output_log_probs=True)
    out = client.completions.create(model="tiny", prompt=ids, max_tokens=6, n=3, logprobs=0,
                                    extra_body={"use_beam_search": True, "length_penalty": 0.5})
    assert [c.index for c in out.choices] == list(range(6))
    for c in out.choices:
        k, b = divmod(c.index, 3)
        beam = want["output_ids"][k, b, len(ids[k]): want["sequence_lengths"][k, b]].tolist()
        assert c.text == tok.decode(beam)
        assert c.logprobs.token_logprobs == pytest.approx(want["log_probs"][k][b], abs=1e-5)
        assert c.finish_reason == ("stop" if beam[-1] == tok.eos_id else "length")
    assert out.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in out.choices)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": TEXTS[4]}], max_tokens=4, n=2,
        extra_body={"use_beam_search": True})
    assert len(chat.choices) == 2 and chat.choices[0].message.content != chat.choices[1].message.content
    assert wait_until_idle(runners[0], live)


def test_guided_regex_answers_match_the_pattern(client, runners):
    """vLLM's guided_regex: the answer is ModelRunner's under the same pattern, and matches it;
    streamed alike."""
    import re
    _, ref = runners
    tok = ref.tokenizer
    pattern = r"(cat|dog)s? x\d{2}"
    ids, out = generated(ref, tok.encode(TEXTS[2]), 12, regex=pattern)
    body = dict(model="tiny", prompt=TEXTS[2], max_tokens=12, temperature=0,
                extra_body={"guided_regex": pattern})
    answer = client.completions.create(**body).choices[0]
    assert answer.text == tok.decode(ids) and re.fullmatch(pattern, answer.text, re.ASCII)
    assert answer.finish_reason == "stop"
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == answer.text


def test_guided_grammar_answers_are_sentences_of_the_grammar(client, runners):
    """vLLM's guided_grammar (EBNF): the answer is ModelRunner's under the same grammar, and a
    sentence of it; streamed alike; chat too."""
    import re
    _, ref = runners
    tok = ref.tokenizer
    grammar = 'root ::= pet ("s")? " x" [0-9]{2}\npet ::= "cat" | "dog"'
    ids, out = generated(ref, tok.encode(TEXTS[2]), 12, grammar=grammar)
    body = dict(model="tiny", prompt=TEXTS[2], max_tokens=12, temperature=0,
                extra_body={"guided_grammar": grammar})
    answer = client.completions.create(**body).choices[0]
    assert answer.text == tok.decode(ids) and re.fullmatch(r"(cat|dog)s? x\d{2}", answer.text)
    assert answer.finish_reason == "stop"
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == answer.text
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": TEXTS[2]}], max_tokens=12,
        temperature=0, extra_body={"guided_grammar": grammar})
    assert re.fullmatch(r"(cat|dog)s? x\d{2}", chat.choices[0].message.content)


def test_best_of_returns_the_n_most_likely_candidates(client, runners):
    """best_of=4, n=2: the two of four seeded samples (seeds seed, seed + 1, ... as
    ModelRunner gives a batch) with the highest cumulative log-probability, best first; usage
    counts every candidate. With beam search, best_of beams of which the n best are returned."""
    _, ref = runners
    tok = ref.tokenizer
    ids = tok.encode(TEXTS[7])
    out = ref.generate([ids] * 4, max_new_tokens=6, end_id=tok.eos_id, temperature=1.0, top_k=0,
                       random_seed=11, output_log_probs=True, return_dict=True)
    samples = [(sum(out["log_probs"][i]),
                out["output_ids"][i, 0, len(ids): out["sequence_lengths"][i, 0]].tolist())
               for i in range(4)]
    best = sorted(samples, key=lambda s: -s[0])[:2]
    got = client.completions.create(model="tiny", prompt=TEXTS[7], max_tokens=6, n=2, best_of=4,
                                    temperature=1.0, seed=11)
    assert [c.text for c in got.choices] == [tok.decode(t) for _, t in best]
    assert got.choices[0].logprobs is None
    assert got.usage.completion_tokens == sum(len(t) for _, t in samples)
    beams = ref.generate([ids], max_new_tokens=6, end_id=tok.eos_id, num_beams=4,
                         return_dict=True)
    got = client.completions.create(model="tiny", prompt=TEXTS[7], max_tokens=6, n=2, best_of=4,
                                    extra_body={"use_beam_search": True})
    assert [c.text for c in got.choices] == [
        tok.decode(beams["output_ids"][0, b, len(ids): beams["sequence_lengths"][0, b]].tolist())
        for b in range(2)]


def http_post(live, path: str, body: dict) -> dict:
    with httpx.Client(base_url=live.url, timeout=60) as http:
        r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_bad_words_never_appear(client, runners):
    """vLLM's bad_words: each word's tokens (and those of the word after a space) are never
    generated; the answer is the reference runner's with the same lists."""
    _, ref = runners
    tok = ref.tokenizer
    prompt = tok.encode(TEXTS[5])
    ids, _ = generated(ref, prompt, 12)
    at = next(i for i, t in enumerate(ids) if i >= 1 and t not in ids[:i]
              and tok.encode(tok.decode([t]), add_special_tokens=False) == [t])
    word = tok.decode([ids[at]])
    lists = [tok.encode(w, add_special_tokens=False) for w in (word, " " + word.lstrip())]
    lists = [x for i, x in enumerate(lists) if x and x not in lists[:i]]
    expect, _ = generated(ref, prompt, 12, bad_words_list=[lists])
    assert ids[at] not in expect and expect[:at] == ids[:at]
    out = client.completions.create(model="tiny", prompt=TEXTS[5], max_tokens=12, temperature=0,
                                    extra_body={"bad_words": [word]})
    assert out.choices[0].text == tok.decode(expect)


def test_tokenize_and_detokenize(live, runners):
    """vLLM's /tokenize (a prompt, or messages in the chat template) and /detokenize."""
    _, ref = runners
    tok = ref.tokenizer
    with httpx.Client(base_url=live.url, timeout=30) as http:
        r = http.post("/tokenize", json={"prompt": TEXTS[0]}).json()
        assert r == {"count": len(tok.encode(TEXTS[0])), "max_model_len": ref.max_seq_len,
                     "tokens": tok.encode(TEXTS[0])}
        bare = http.post("/tokenize", json={"prompt": TEXTS[0], "add_special_tokens": False})
        assert bare.json()["tokens"] == tok.encode(TEXTS[0], add_special_tokens=False)
        chat = http.post("/tokenize", json={"model": "tiny", "messages": [
            {"role": "user", "content": "hello there"}]}).json()
        assert chat["tokens"] == tok.chat("hello there")
        ids = tok.encode(TEXTS[1], add_special_tokens=False)
        assert http.post("/detokenize", json={"tokens": ids}).json() == {"prompt": tok.decode(ids)}
        for path, body, message in (
                ("/tokenize", {}, "pass either prompt or messages"),
                ("/tokenize", {"prompt": "x", "messages": []}, "pass either prompt or messages"),
                ("/detokenize", {"tokens": [1, 320]}, r"tokens has token id 320, outside"),
                ("/detokenize", {"tokens": "abc"}, "tokens is invalid"),
                ("/tokenize", {"prompt": "x", "model": "other"}, "model 'other' does not exist")):
            r = http.post(path, json=body)
            assert r.status_code in (400, 404), (path, body)
            assert re.search(message, r.json()["error"]["message"]), r.json()


def test_guided_choice_answers_one_of_the_choices(client, runners):
    """vLLM's guided_choice: the answer is one of the choices, each token the model's best
    among those that continue one (worked out here a token at a time with allowed_token_ids)."""
    _, ref = runners
    tok = ref.tokenizer
    options = ["the object", "a value returned", "the function call"]
    seqs = [tok.encode(o, add_special_tokens=False) for o in options]
    room = max(len(s) for s in seqs) + 2
    for text, chat in ((TEXTS[2], False), ("which one?", True)):
        prompt = tok.chat(text) if chat else tok.encode(text)
        got = []
        while got not in seqs:
            allowed = sorted({s[len(got)] for s in seqs if s[: len(got)] == got and len(s) > len(got)})
            got += generated(ref, prompt + got, 1, allowed_token_ids=allowed)[0]
        if chat:
            out = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": text}], max_tokens=room,
                temperature=0, extra_body={"guided_choice": options})
            answer = out.choices[0].message.content
        else:
            out = client.completions.create(model="tiny", prompt=text, max_tokens=room,
                                            temperature=0, extra_body={"guided_choice": options})
            answer = out.choices[0].text
        assert answer == tok.decode(got) and answer in options
        assert out.choices[0].finish_reason == "stop"


def test_response_format_json_object_answers_one_json_object(client, runners):
    """response_format json_object: each token the model's best among those whose bytes continue
    a JSON object (worked out here a token at a time with allowed_token_ids), the answer a JSON
    object, finish_reason "stop"; a logit bias on the closing brace makes it close early."""
    import json

    from kiln import _core

    _, ref = runners
    tok = ref.tokenizer
    table = tok.token_table(ref.vocab_size)
    close = next(t for t in range(ref.vocab_size) if table[t] == b"}")
    for text, chat in ((TEXTS[4], False), ("answer in JSON", True)):
        prompt = tok.chat(text) if chat else tok.encode(text)
        got, state = [], _core.JsonObjectPrefix()
        while not state.complete:
            allowed = [t for t in range(ref.vocab_size) if table[t] and state.copy().feed(table[t])]
            got += generated(ref, prompt + got, 1, allowed_token_ids=allowed,
                             logit_bias={close: 40.0})[0]
            assert state.feed(table[got[-1]]) and len(got) < 30
        extra = {"response_format": {"type": "json_object"}}
        if chat:
            out = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": text}], max_tokens=30,
                temperature=0, logit_bias={str(close): 40}, **extra)
            answer = out.choices[0].message.content
        else:
            out = client.completions.create(model="tiny", prompt=text, max_tokens=30,
                                            temperature=0, logit_bias={str(close): 40},
                                            extra_body=extra)
            answer = out.choices[0].text
        assert answer == tok.decode(got) and isinstance(json.loads(answer), dict)
        assert out.choices[0].finish_reason == "stop"


def test_json_schema_answers_one_value_of_the_schema(client, runners):
    """response_format json_schema (chat) and vLLM's guided_json (completions): the answer is
    ModelRunner's with json_schema, a value the jsonschema package accepts, finish_reason
    "stop" once it is complete."""
    import json

    import jsonschema

    _, ref = runners
    tok = ref.tokenizer
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "size": {"enum": ["S", "M", "L"]}},
              "required": ["ok", "size"]}
    for text, chat in (("answer in JSON", True), (TEXTS[4], False)):
        prompt = tok.chat(text) if chat else tok.encode(text)
        expect, out = generated(ref, prompt, 30, json_schema=schema)
        if chat:
            answer = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": text}], max_tokens=30,
                temperature=0, response_format={"type": "json_schema", "json_schema": {
                    "name": "answer", "schema": schema, "strict": True}})
            got = answer.choices[0].message.content
        else:
            answer = client.completions.create(model="tiny", prompt=text, max_tokens=30,
                                               temperature=0, extra_body={"guided_json": schema})
            got = answer.choices[0].text
        assert got == tok.decode(expect)
        if out["finish_reasons"][0] == "stop_words":
            jsonschema.validate(json.loads(got), schema)
            assert answer.choices[0].finish_reason == "stop"


def test_stop_token_ids_end_the_completion(client, runners):
    """vLLM's stop_token_ids: generation ends on the first of them, which stays in the
    output (its text too, unless it is a special token), finish_reason "stop"."""
    _, ref = runners
    tok = ref.tokenizer
    ids, _ = generated(ref, tok.encode(TEXTS[4]), 30)
    at = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    expect = tok.decode(ids[: at + 1])
    body = dict(model="tiny", prompt=TEXTS[4], max_tokens=30, temperature=0)
    unseen = next(t for t in range(len(tok.hf)) if t not in ids[: at + 1])
    out = client.completions.create(**body, extra_body={"stop_token_ids": [unseen, ids[at]]})
    assert (out.choices[0].text, out.choices[0].finish_reason) == (expect, "stop")
    assert out.usage.completion_tokens == at + 1
    chunks = list(client.completions.create(**body, stream=True,
                                            extra_body={"stop_token_ids": [ids[at]]}))
    assert "".join(c.choices[0].text for c in chunks) == expect
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_min_tokens_holds_back_the_stops_until_then(client, runners):
    """vLLM's min_tokens: the stop ids and end of text are not generated before min_tokens
    tokens, and the answer is the reference executor's with the same rule."""
    _, ref = runners
    tok = ref.tokenizer
    prompt = tok.encode(TEXTS[4])
    ids, _ = generated(ref, prompt, 30)
    at = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    least = at + 4
    expect, _ = generated(ref, prompt, 30, stop_words_list=[[ids[at]]], min_tokens=least)
    assert len(expect) >= least and ids[at] not in expect[:least]
    assert expect[:at] == ids[:at] and expect[at] != ids[at]
    body = dict(model="tiny", prompt=TEXTS[4], max_tokens=30, temperature=0,
                extra_body={"stop_token_ids": [ids[at]], "min_tokens": least})
    out = client.completions.create(**body)
    assert out.choices[0].text == tok.decode(expect)
    assert out.usage.completion_tokens == len(expect)
    assert out.choices[0].finish_reason == reason(expect, 30)
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == tok.decode(expect)


def test_logit_bias_steers_the_answer(client, runners):
    """OpenAI's logit_bias: ids as strings, added to the logits; the answer is the reference
    executor's with the same bias."""
    _, ref = runners
    tok = ref.tokenizer
    prompt = tok.encode(TEXTS[2])
    ids, _ = generated(ref, prompt, 12)
    bias = {ids[0]: -100.0, ids[4]: 2.0}
    expect, _ = generated(ref, prompt, 12, logit_bias=bias)
    assert expect[0] != ids[0]
    out = client.completions.create(model="tiny", prompt=TEXTS[2], max_tokens=12, temperature=0,
                                    logit_bias={str(t): b for t, b in bias.items()})
    assert out.choices[0].text == tok.decode(expect)
    assert out.usage.completion_tokens == len(expect)


def test_64_concurrent_streams_complete(live, runners):
    served, ref = runners
    tok = ref.tokenizer
    prompts = [f"{TEXTS[i % 8]} {i}" for i in range(64)]
    batch = ref.generate([tok.encode(p) for p in prompts], max_new_tokens=10, end_id=tok.eos_id,
                         top_k=1, return_dict=True)
    expected = [tok.decode(batch["output_ids"][i, 0, len(tok.encode(p)): batch["sequence_lengths"][i, 0]].tolist())
                for i, p in enumerate(prompts)]
    client = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(i):
        text = ""
        async for c in await client.completions.create(model="tiny", prompt=prompts[i],
                                                       max_tokens=10, temperature=0, stream=True):
            text += c.choices[0].text
        return text

    async def all_of_them():
        try:
            return await asyncio.gather(*(one(i) for i in range(64)))
        finally:
            await client.close()

    assert asyncio.run(all_of_them()) == expected
    assert wait_until_idle(served, live)


def slow_steps(monkeypatch, runner, seconds):
    forward = runner.backend.forward
    monkeypatch.setattr(runner.backend, "forward", lambda step: (time.sleep(seconds), forward(step))[1])


def test_disconnect_cancels_and_frees_blocks(live, runners, monkeypatch):
    served, _ = runners
    slow_steps(monkeypatch, served, 0.01)
    body = {"prompt": TEXTS[5], "max_tokens": 100, "temperature": 0, "ignore_eos": True}
    before = live.state.engine.cancelled
    with httpx.Client(base_url=live.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        assert wait_until_idle(served, live)  # long before 100 slow steps end
        assert live.state.engine.cancelled == before + 1
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up on a whole answer
            http.post("/v1/chat/completions", timeout=0.3, json={
                "messages": [{"role": "user", "content": "x"}], "max_tokens": 100,
                "temperature": 0, "ignore_eos": True})
        assert wait_until_idle(served, live)
        assert live.state.engine.cancelled == before + 2
    stats = served.kv_cache_stats()
    assert stats["free_blocks"] == stats["total_blocks"]


def test_queue_bound_answers_503_with_retry_after(runners, monkeypatch):
    served, _ = runners
    slow_steps(monkeypatch, served, 0.01)
    body = {"prompt": "x", "max_tokens": 60, "temperature": 0, "ignore_eos": True, "stream": True}
    with LiveServer(served, max_queue_size=1) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        batch = served.executor.config.max_batch_size
        streams = [http.stream("POST", "/v1/completions", json=body) for _ in range(batch)]
        assert all(s.__enter__().status_code == 200 for s in streams)  # a full batch running
        waiting = threading.Thread(target=lambda: http.post("/v1/completions", json=body))
        waiting.start()  # one waits for a slot: within the bound
        while live.state.engine.in_flight < batch + 1:
            time.sleep(0.005)
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert "retry in 1 s" in r.json()["error"]["message"]
        for s in streams:
            s.__exit__(None, None, None)
        waiting.join()
        assert wait_until_idle(served, live)


def test_models_health_and_metrics(live, client, runners):
    served, _ = runners
    assert [m.id for m in client.models.list().data] == ["tiny"]
    with httpx.Client(base_url=live.url) as http:
        assert http.get("/health").json() == {"status": "ok"}
        client.completions.create(model="tiny", prompt="x", max_tokens=3, temperature=0)
        assert wait_until_idle(served, live)
        text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("kiln_http_requests", "kiln_requests_finished", "kiln_prompt_tokens",
                 "kiln_generation_tokens", "kiln_time_to_first_token_seconds",
                 "kiln_inter_token_latency_seconds", "kiln_request_latency_seconds",
                 "kiln_requests_in_flight", "kiln_queue_depth", "kiln_kv_cache_blocks",
                 "kiln_kv_cache_usage_ratio", "kiln_executor_waiting_requests"):
        assert name in families, name

    def value(family, sample_name, **labels):
        return next(s.value for s in families[family].samples
                    if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("kiln_requests_in_flight", "kiln_requests_in_flight") == 0
    assert value("kiln_kv_cache_blocks", "kiln_kv_cache_blocks", state="used") == 0
    assert value("kiln_kv_cache_blocks", "kiln_kv_cache_blocks", state="total") == \
        served.kv_cache_stats()["total_blocks"]
    assert value("kiln_http_requests", "kiln_http_requests_total", path="/health", status="200") >= 1
    ttft = value("kiln_time_to_first_token_seconds", "kiln_time_to_first_token_seconds_count")
    assert ttft >= 1
    assert value("kiln_generation_tokens", "kiln_generation_tokens_total") >= 3
    step_s = value("kiln_executor_step_seconds", "kiln_executor_step_seconds_total")
    forward_s = value("kiln_executor_forward_seconds", "kiln_executor_forward_seconds_total")
    assert value("kiln_executor_steps", "kiln_executor_steps_total") >= 3  # a prompt + 2 decodes
    assert 0 < forward_s <= step_s
