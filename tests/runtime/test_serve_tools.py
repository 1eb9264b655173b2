"""Tool calling on engine-serve's chat completions: a named tool's arguments and required
calls are JSON valid against the tools' schemas (the answer equals ModelRunner's JSON-schema
generation on the same prompt), auto calls are read from <tool_call> blocks by the hermes
parser; streamed, the same calls."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from kiln.runtime import ModelRunner
from kiln.runtime.serve.tools import (ToolPlan, hermes_calls, llama3_calls, mistral_calls,
                                     plan_tools)
from test_serve import LiveServer

WEATHER = {"type": "object", "properties": {
    "city": {"enum": ["Paris", "Oslo", "Lima"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 14}}, "required": ["city", "days"]}
CLOCK = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
         "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Forecast.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def served(tiny_engine):
    _, engine = tiny_engine("llama", max_seq_len=256)  # room for a random model's whitespace
    with ModelRunner.from_dir(engine, device="cpu") as runner, \
            ModelRunner.from_dir(engine, device="cpu") as reference, \
            LiveServer(runner, tool_parser="hermes") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                               timeout=60)
        yield client, reference


def no_whitespace(tokenizer, vocab_size: int) -> dict[int, float]:
    """A logit bias that keeps a random model from padding its JSON with whitespace (it would
    fill max_tokens before the object closes)."""
    return {t: -100.0 for t in range(vocab_size)
            if tokenizer.decode([t]) and not tokenizer.decode([t]).strip()}


def schema_answer(reference, schema: dict, max_tokens: int) -> str:
    """ModelRunner's greedy answer to MESSAGES (with TOOLS in the template) under `schema`,
    whitespace kept out."""
    tok = reference.tokenizer
    prompt = tok.hf.apply_chat_template(MESSAGES, tools=TOOLS, add_generation_prompt=True,
                                        tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    out = reference.generate([prompt], max_new_tokens=max_tokens, json_schema=schema,
                             end_id=tok.eos_id, return_dict=True,
                             logit_bias=no_whitespace(tok, reference.vocab_size))
    return tok.decode(out["output_ids"][0, 0, len(prompt): out["sequence_lengths"][0, 0]].tolist())


def test_a_named_tool_is_called_with_arguments_of_its_schema(served):
    client, reference = served
    choice = {"type": "function", "function": {"name": "get_weather"}}
    bias = {"logit_bias": {str(t): b for t, b in no_whitespace(reference.tokenizer,
                                                              reference.vocab_size).items()}}
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                         tool_choice=choice, max_tokens=200, temperature=0,
                                         extra_body=bias)
    message = out.choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_")
    assert call.function.arguments == schema_answer(reference, WEATHER, 200)
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert out.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                                 tool_choice=choice, max_tokens=200,
                                                 temperature=0, stream=True, extra_body=bias))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 and (d.id is None) == (i > 0) for i, d in enumerate(deltas))
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments


def test_required_calls_tools_with_arguments_of_their_schemas(served):
    client, reference = served
    bias = {"logit_bias": {str(t): b for t, b in no_whitespace(reference.tokenizer,
                                                              reference.vocab_size).items()}}
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                         tool_choice="required", max_tokens=200, temperature=0,
                                         extra_body=bias)
    message = out.choices[0].message
    plan = ToolPlan("required", SCHEMAS, TOOLS)
    text = schema_answer(reference, plan.schema, 200)
    assert message.tool_calls, (out.choices[0].finish_reason, message.content, text)
    assert [c.function.name for c in message.tool_calls] == list(json.loads(text))
    assert out.choices[0].finish_reason == "tool_calls" and message.content is None
    for call in message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        assert json.loads(call.function.arguments) == json.loads(text)[call.function.name]
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                                 tool_choice="required", max_tokens=200,
                                                 temperature=0, stream=True, extra_body=bias))
    streamed = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name, d.function.arguments) for d in streamed] == [
        (i, c.function.name, c.function.arguments) for i, c in enumerate(message.tool_calls)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("text,content,calls", [
    ('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>', None,
     [("get_time", {"zone": "UTC"})]),
    ('Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}'
     '</tool_call><tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>',
     "Let me look.", [("get_weather", {"city": "Oslo", "days": 2}), ("get_time", {"zone": "CET"})]),
    ("It is sunny.", "It is sunny.", []),
])
def test_auto_reads_hermes_tool_calls(served, text, content, calls):
    """The model's text forced by guided_choice: calls read out of <tool_call> blocks, the text
    before them the content; streamed, content up to the first block, the calls at the end."""
    client, _ = served
    body = dict(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=150, temperature=0,
                extra_body={"guided_choice": [text]})
    out = client.chat.completions.create(**body)
    message = out.choices[0].message
    assert message.content == content
    got = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert got == calls
    assert out.choices[0].finish_reason == ("tool_calls" if calls else "stop")
    chunks = list(client.chat.completions.create(**body, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.strip() == (content or "")
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == calls


@pytest.mark.parametrize("parser,text,content,calls", [
    ("llama3_json", '{"name": "get_time", "parameters": {"zone": "UTC"}}', None,
     [("get_time", {"zone": "UTC"})]),
    ("llama3_json",
     '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Lima", "days": 3}}; '
     '{"name": "get_time", "arguments": {"zone": "PET"}}', None,
     [("get_weather", {"city": "Lima", "days": 3}), ("get_time", {"zone": "PET"})]),
    ("llama3_json", "Sunny, 21 degrees.", "Sunny, 21 degrees.", []),
    ("mistral", 'Checking. [TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "EST"}}, '
     '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}]', "Checking.",
     [("get_time", {"zone": "EST"}), ("get_weather", {"city": "Oslo", "days": 1})]),
    ("mistral", "No tools needed here.", "No tools needed here.", []),
])
def test_auto_reads_llama3_json_and_mistral_tool_calls(tiny_engine, parser, text, content,
                                                        calls):
    """--tool-call-parser llama3_json (an answer that is JSON calls is calls, none of it
    streamed as content) and mistral ([TOOL_CALLS] and a JSON list, the text before it the
    content); any other answer is content, streamed as it comes."""
    _, engine = tiny_engine("llama", max_seq_len=256)
    with ModelRunner.from_dir(engine, device="cpu") as runner, \
            LiveServer(runner, tool_parser=parser) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        body = dict(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=150, temperature=0,
                    extra_body={"guided_choice": [text]})
        message = client.chat.completions.create(**body).choices[0].message
        chunks = list(client.chat.completions.create(**body, stream=True))
    assert message.content == content
    got = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert got == calls
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == (content or "")
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == calls
    if not calls:  # content streamed as it came, not held to the end
        assert sum(1 for c in chunks if c.choices[0].delta.content) > 1


def test_a_conversation_with_tool_results_goes_to_the_template(served):
    """An assistant message's tool_calls (arguments as JSON text) and the tool's answer reach
    the chat template; tool_choice none answers in text."""
    client, _ = served
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}]
    out = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                         tool_choice="none", max_tokens=5, temperature=0)
    assert out.choices[0].message.tool_calls is None and out.choices[0].message.content


def test_hermes_parsing_and_plans():
    plan = ToolPlan("auto", SCHEMAS, TOOLS)
    assert hermes_calls('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', plan)[1] == []
    assert hermes_calls("<tool_call>{not json</tool_call>", plan) == (
        "<tool_call>{not json</tool_call>", [])
    content, calls = hermes_calls('ok<tool_call>{"name": "get_time", "arguments": "{}"}', plan)
    assert content == "ok" and calls[0]["function"] == {"name": "get_time", "arguments": "{}"}

    assert llama3_calls('{"name": "get_time", "parameters": {}} trailing', plan)[1] == []
    assert llama3_calls('{"name": "nope", "parameters": {}}', plan)[1] == []
    assert llama3_calls("{broken", plan) == ("{broken", [])
    assert mistral_calls('[TOOL_CALLS] {"name": "get_time"}', plan)[1] == []  # not a list
    assert mistral_calls("[TOOL_CALLS] []", plan)[1] == []

    class Body:
        tools, tool_choice = None, None
    assert plan_tools(Body(), None) is None
    Body.tools, Body.tool_choice = TOOLS, "required"
    assert plan_tools(Body(), None).mode == "required"
    Body.tool_choice = "auto"
    assert plan_tools(Body(), "hermes").mode == "auto"
