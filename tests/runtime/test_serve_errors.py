"""Every bad request gets its 4xx with a JSON body saying what was wrong, and none of them
disturbs a good request running at the same time or takes the server down."""
from __future__ import annotations

import re
import threading

import httpx
import openai
import pytest

from kiln.runtime import ModelRunner
from test_serve import LiveServer, generated

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def setup(tiny_engine):
    _, engine = tiny_engine("llama")
    with ModelRunner.from_dir(engine, device="cpu") as runner, LiveServer(runner) as live, \
            httpx.Client(base_url=live.url, timeout=30) as http:
        yield runner, live, http


BAD = [
    (COMPLETIONS, {"prompt": "the " * 200, "max_tokens": 4}, 400, "context_length_exceeded",
     r"the prompt has \d+ tokens, but this model's maximum context length is 128"),
    (COMPLETIONS, {"prompt": "the object", "max_tokens": 126}, 400, "context_length_exceeded",
     r"prompt has \d+ tokens and max_tokens asks for 126 more; .* at most \d+"),
    (CHAT, {"messages": USER, "max_completion_tokens": 500}, 400, "context_length_exceeded",
     "max_completion_tokens asks for 500"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 0}, 400, 400, "max_tokens is 0; ask for at least 1"),
    (COMPLETIONS, {"prompt": "x", "temperature": -1}, 400, 400, "temperature is -1 but must be"),
    (COMPLETIONS, {"prompt": "x", "top_p": 1.5}, 400, 400, r"top_p is 1.5 but must be in \(0, 1\]"),
    (COMPLETIONS, {"prompt": "x", "top_k": -2}, 400, 400, "top_k is -2"),
    (CHAT, {"messages": USER, "presence_penalty": 3}, 400, 400, r"presence_penalty is 3 but must be in \[-2, 2\]"),
    (COMPLETIONS, {"prompt": "x", "n": 0}, 400, 400, "n is 0"),
    (COMPLETIONS, {"prompt": ["a", "b"], "n": 40}, 400, 400, "more than 64 completions"),
    (COMPLETIONS, {"prompt": "x", "model": "gpt-4"}, 404, "model_not_found", "model 'gpt-4' does not exist"),
    (CHAT, {"messages": USER, "model": "other"}, 404, "model_not_found", "this server serves 'tiny'"),
    (COMPLETIONS, {"max_tokens": 3}, 400, 400, "prompt is required"),
    (COMPLETIONS, {"prompt": ["a", 3]}, 400, 400, r"prompt must be one of: str \| list\[str\]"),
    (COMPLETIONS, {"prompt": [5, 100000]}, 400, 400, r"token id 100000, outside the vocabulary \[0, 320\)"),
    (COMPLETIONS, {"prompt": []}, 400, 400, "prompt is empty"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "many"}, 400, 400, "max_tokens is invalid"),
    # JSON's types as OpenAI takes them: no bool, string or float read as an integer
    (COMPLETIONS, {"prompt": "x", "max_tokens": True}, 400, 400,
     "max_tokens is invalid: Input should be a valid integer"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 4.0}, 400, 400,
     "max_tokens is invalid: Input should be a valid integer"),
    (COMPLETIONS, {"prompt": "x", "n": "2"}, 400, 400, "n is invalid: Input should be a valid integer"),
    (COMPLETIONS, {"prompt": "x", "stream": "yes"}, 400, 400,
     "stream is invalid: Input should be a valid boolean"),
    (COMPLETIONS, {"prompt": "x", "temperature": "0.5"}, 400, 400,
     "temperature is invalid: Input should be a valid number"),
    (COMPLETIONS, {"prompt": "x", "seed": 2 ** 64}, 400, 400,
     "seed is invalid: Input should be less than or equal to 9223372036854775807"),
    (COMPLETIONS, {"prompt": "x", "seed": -2 ** 63 - 1}, 400, 400,
     "seed is invalid: Input should be greater than or equal to -9223372036854775808"),
    (COMPLETIONS, {"prompt": "x", "stop": ["ok", ""]}, 400, 400, "stop contains an empty string"),
    (COMPLETIONS, {"prompt": "x", "stop": ["s"] * 17}, 400, 400, "pass at most 16"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 21}, 400, 400, "logprobs is 21 but must be between 0 and 20"),
    (COMPLETIONS, {"prompt": "x", "echo": True, "logprobs": 21}, 400, 400,
     "logprobs is 21 but must be between 0 and 20"),
    (COMPLETIONS, {"prompt": "x", "prompt_logprobs": 21}, 400, 400,
     "prompt_logprobs is 21 but must be between 0 and 20"),
    (CHAT, {"messages": USER, "prompt_logprobs": -1}, 400, 400,
     "prompt_logprobs is -1 but must be between 0 and 20"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"5": 101}}, 400, 400,
     r"logit_bias\[5\] is 101 but must be in \[-100, 100\]"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"320": 1}}, 400, 400,
     r"logit_bias has token id 320, outside the vocabulary \[0, 320\)"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"five": 1}}, 400, 400,
     "logit_bias key 'five' is not a token id"),
    (COMPLETIONS, {"prompt": "x", "allowed_token_ids": []}, 400, 400, "allowed_token_ids is empty"),
    (COMPLETIONS, {"prompt": "x", "guided_choice": []}, 400, 400, "guided_choice is empty"),
    (COMPLETIONS, {"prompt": "x", "guided_choice": ["a", ""]}, 400, 400,
     "guided_choice contains an empty choice"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 1, "guided_choice": ["the value of"]}, 400, 400,
     "every guided_choice is longer than the 1 tokens asked for"),
    (COMPLETIONS, {"prompt": "x", "bad_words": ["ok", " "]}, 400, 400,
     "bad_words contains an empty word; remove it"),
    (COMPLETIONS, {"prompt": "x", "allowed_token_ids": [4, 320]}, 400, 400,
     r"allowed_token_ids has token id 320, outside the vocabulary \[0, 320\)"),
    (COMPLETIONS, {"prompt": "x", "truncate_prompt_tokens": 0}, 400, 400,
     r"truncate_prompt_tokens is 0; pass k >= 1 \(keep each prompt's last k tokens\) or -1"),
    (CHAT, {"messages": []}, 400, 400, "messages is empty"),
    (CHAT, {"messages": [{"content": "x"}]}, 400, 400, r"messages\.0\.role is required"),
    (CHAT, {"messages": [{"role": "user", "content": 7}]}, 400, 400, r"messages\.0\.content must be one of"),
    (CHAT, {"messages": [{"role": "system", "content": "be brief"}, {"role": "user"}]}, 400, 400,
     r"messages\.1: a user message needs its content; pass content"),
    (CHAT, {"messages": USER, "stream_options": {
        "include_usage": 1}}, 400, 400, r"stream_options\.include_usage is invalid"),
    (CHAT, {"messages": USER, "top_logprobs": 3}, 400, 400, "top_logprobs needs logprobs set to true"),
    (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, 400,
     "top_logprobs is 21 but must be between 0 and 20"),
    (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400, 400,
     r"tools\[0\] must be \{\"type\": \"function\", \"function\""),
    (CHAT, {"messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]}, 400, 400,
     r"tools\[0\].function.name must be 1 to 64 letters"),
    (CHAT, {"messages": USER, "tools": [TOOL, TOOL]}, 400, 400, "the name 'f' is given twice"),
    (CHAT, {"messages": USER, "tools": [TOOL]}, 400, 400,
     "tool_choice auto \\(the default with tools\\) needs a tool-call parser"),
    (CHAT, {"messages": USER, "tools": [TOOL], "tool_choice": {"type": "function",
                                                             "function": {"name": "g"}}}, 400, 400,
     "tool_choice must name one of the tools"),
    (CHAT, {"messages": USER, "tools": [TOOL], "tool_choice": "sometimes"}, 400, 400,
     "tool_choice is 'sometimes'; it must be none, auto, required"),
    (CHAT, {"messages": USER, "tools": [TOOL], "tool_choice": "required",
            "response_format": {"type": "json_object"}}, 400, 400,
     "tool_choice required writes the answer as JSON for the tools"),
    (CHAT, {"messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"format": "x"}}}}}],
        "tool_choice": "required"}, 400, 400, "'format' is not supported"),
    (CHAT, {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}}, 400,
     400, "response_format json_schema needs"),
    (CHAT, {"messages": USER, "response_format": {"type": "grammar"}}, 400,
     "unsupported_parameter", "response_format's type must be text, json_object or json_schema"),
    (CHAT, {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"format": "email"}}}}}},
     400, 400, r"schema\.properties\.a: the keyword 'format' is not supported"),
    (COMPLETIONS, {"prompt": "x", "guided_json": {"type": "string"}}, 400, 400,
     "the top-level schema must describe an object or an array"),
    (COMPLETIONS, {"prompt": "x", "guided_json": {"type": "object"},
                   "response_format": {"type": "json_object"}}, 400, 400,
     "response_format and guided_json do not combine"),
    (COMPLETIONS, {"prompt": "x", "guided_json": "{oops", "guided_choice": ["a"]}, 400, 400,
     "guided_choice and guided_json do not combine"),
    (COMPLETIONS, {"prompt": "x", "response_format": {"type": "json_object"},
                   "guided_choice": ["a"]}, 400, 400,
     "guided_choice and response_format json_object do not combine"),
    (CHAT, [1, 2], 400, 400, "must be a JSON object"),
    (COMPLETIONS, {"prompt": "x", "stop_token_ids": [3, 320]}, 400, 400,
     r"stop_token_ids has token id 320, outside the vocabulary \[0, 320\)"),
    (COMPLETIONS, {"prompt": "x", "stop_token_ids": list(range(17))}, 400, 400,
     "stop_token_ids has 17 ids; pass at most 16"),
    (COMPLETIONS, {"prompt": "x", "stop_token_ids": ["a"]}, 400, 400, r"stop_token_ids\.0"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 4, "min_tokens": 5}, 400, 400,
     "min_tokens is 5 but max_tokens is 4; ask for at most 4"),
    (COMPLETIONS, {"prompt": "x", "min_tokens": -1}, 400, 400,
     r"min_tokens is -1 but must be >= 0"),
    (COMPLETIONS, {"prompt": "x", "use_beam_search": True, "stream": True}, 400,
     "unsupported_parameter", "beam search returns its beams at the end and does not stream"),
    (COMPLETIONS, {"prompt": "x", "use_beam_search": True, "n": 11}, 400, 400,
     "n is 11; beam search takes that many beams, between 1 and 10"),
    (COMPLETIONS, {"prompt": "x", "use_beam_search": True, "n": 2, "best_of": 12}, 400, 400,
     "best_of is 12; beam search takes that many beams"),
    (COMPLETIONS, {"prompt": "x", "n": 3, "best_of": 2}, 400, 400,
     r"best_of is 2 but must be at least n \(3\)"),
    (COMPLETIONS, {"prompt": ["x"] * 9, "best_of": 8}, 400, 400,
     "9 prompts times best_of=8 asks for more than 64 completions"),
    (COMPLETIONS, {"prompt": "x", "best_of": 2, "stream": True}, 400, "unsupported_parameter",
     "best_of > n picks the best completions at the end and cannot be streamed"),
    (COMPLETIONS, {"prompt": "x", "use_beam_search": True, "n": 2, "temperature": 0.7}, 400, 400,
     "does not combine with sampling"),
    (COMPLETIONS, {"prompt": "x", "prompt_logprobs": 0, "stream": True}, 400,
     "unsupported_parameter", "prompt_logprobs is not available with stream"),
    (CHAT, {"messages": USER, "guided_grammar": "root ::= x"}, 400, 400,
     "line 1, column 10: rule 'x' is used but never defined"),
    (CHAT, {"messages": USER, "guided_grammar": 'root ::= "a"', "guided_regex": "a"}, 400, 400,
     "guided_grammar and guided_regex do not combine"),
    (COMPLETIONS, {"prompt": "x", "guided_grammar": 'root ::= "a"', "guided_json": {"type": "object"}},
     400, 400, "guided_grammar and response_format or guided_json do not combine"),
    (CHAT, {"messages": USER, "guided_regex": "(a)\\1"}, 400, 400, r"\\1 is not supported"),
    (CHAT, {"messages": USER, "guided_regex": "a+", "guided_choice": ["a"]}, 400, 400,
     "guided_regex and guided_choice do not combine"),
    (COMPLETIONS, {"prompt": "x", "guided_regex": "a+", "response_format": {"type": "json_object"}},
     400, 400, "guided_regex and response_format or guided_json do not combine"),
    (CHAT, {"messages": USER, "tool_choice": "required"}, 400, 400, "tool_choice needs tools"),
    (CHAT, {"messages": USER, "functions": [{"name": "f"}]}, 400, "unsupported_parameter",
     "pass them as tools and tool_choice"),
    (CHAT, {"messages": USER, "modalities": ["text", "audio"]}, 400, "unsupported_parameter",
     "only text output"),
]


@pytest.mark.parametrize("path, body, status, code, message", BAD,
                         ids=[f"{i}-{b[0].rsplit('/', 1)[1]}" for i, b in enumerate(BAD)])
def test_bad_request_gets_its_4xx(setup, path, body, status, code, message):
    runner, _, http = setup
    good = {}
    worker = threading.Thread(target=lambda: good.update(r=http.post(COMPLETIONS, json={
        "prompt": "the object", "max_tokens": 20, "temperature": 0})))
    worker.start()
    r = http.post(path, json=body)
    worker.join()
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == code
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert re.search(message, error["message"]), error["message"]
    assert "\n" not in error["message"]
    assert good["r"].status_code == 200
    ids, _ = generated(runner, runner.tokenizer.encode("the object"), 20)
    assert good["r"].json()["choices"][0]["text"] == runner.tokenizer.decode(ids)


def test_malformed_http(setup):
    _, _, http = setup
    r = http.post(COMPLETIONS, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = http.post(COMPLETIONS, content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route /v1/nothing"
    r = http.get(COMPLETIONS)
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]["message"]
    assert http.get("/health").status_code == 200


def test_openai_client_raises_the_matching_errors(setup):
    _, live, _ = setup
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128"):
        client.completions.create(model="tiny", prompt="the " * 200, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.BadRequestError, match="context length") as err:
        client.completions.create(model="tiny", prompt="the object", max_tokens=1000, stream=True)
    assert err.value.status_code == 400  # refused before the stream starts


def test_unexpected_failure_is_a_500_and_the_server_stays_up(setup, monkeypatch):
    runner, _, http = setup
    monkeypatch.setattr(runner.tokenizer, "encode", lambda *a, **k: 1 / 0)
    r = http.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "internal error: ZeroDivisionError: division by zero"
    monkeypatch.undo()
    r = http.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
