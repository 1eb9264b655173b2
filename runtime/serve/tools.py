"""OpenAI tool calling on /v1/chat/completions, as vLLM serves it.

The tools go to the chat template (`tools=`), so the model sees them as its template words
them. `tool_choice` then decides the answer:
- "none": plain text.
- {"type": "function", "function": {"name": N}}: the answer is N's arguments, one JSON value
  valid against N's `parameters` (the executor's JSON-schema output), returned as one call.
- "required": one JSON object {name: arguments, ...} with at least one property, each a tool's
  name and its arguments valid against that tool's `parameters`; each property is one call, in
  the order written (so a tool is called at most once per answer).
- "auto" (the default when tools are given): free text, read by the tool-call parser the server
  was started with (`engine-serve --enable-auto-tool-choice --tool-call-parser P`): `hermes`,
  calls written as <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Hermes, Qwen2.5 and
  their chat templates), or `llama3_json`, an answer that is one or more {"name": ...,
  "parameters": {...}} objects separated by ";" (Llama 3.1-3.3's JSON tool calls, after an
  optional <|python_tag|>), or `mistral`, [TOOL_CALLS] followed by a JSON list of {"name": ...,
  "arguments": {...}} (Mistral's chat templates); without one, "auto" is refused as vLLM
  refuses it.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from kiln.runtime.serve.errors import bad_request

PARSERS = ("hermes", "llama3_json", "mistral")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
HERMES_OPEN = "<tool_call>"
MISTRAL_OPEN = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(slots=True)
class ToolPlan:
    """What a chat request's tools make of its answer."""
    mode: str                     # "none", "named", "required" or "auto"
    tools: dict[str, dict]        # name -> its parameters' schema
    template_tools: list[dict]    # the tools as the chat template takes them
    name: str | None = None       # the tool a named choice calls
    parser: str | None = None     # with auto: PARSERS' name
    ids: list[str] = field(default_factory=list)  # the calls' ids, made as they are first sent

    @property
    def schema(self) -> dict | None:
        """The answer's JSON schema (named and required), else None."""
        if self.mode == "named":
            return self.tools[self.name]
        if self.mode == "required":
            defs, props = {}, {}
            for i, (name, params) in enumerate(self.tools.items()):
                props[name] = {"$ref": f"#/$defs/tool{i}"}
                defs.update(_rooted(params, f"tool{i}"))
            return {"type": "object", "properties": props, "additionalProperties": False,
                    "minProperties": 1, "$defs": defs}
        return None

    def call_id(self, index: int) -> str:
        while len(self.ids) <= index:
            self.ids.append(f"call_{uuid.uuid4().hex[:24]}")
        return self.ids[index]

    def calls(self, text: str) -> tuple[str | None, list[dict]]:
        """(the answer's content, its tool calls) from its whole text."""
        if self.mode == "named":
            return None, [self._call(0, self.name, text)]
        if self.mode == "required":
            try:
                called = json.loads(text)  # in the order written (the schema allows no repeat)
            except ValueError:  # cut short (max_tokens): no call, the text as it is
                return text, []
            return None, [self._call(i, name, json.dumps(args, ensure_ascii=False))
                          for i, (name, args) in enumerate(called.items())]
        if self.mode == "auto":
            parse = {"llama3_json": llama3_calls, "mistral": mistral_calls}.get(self.parser,
                                                                              hermes_calls)
            return parse(text, self)
        return text, []

    def content_end(self, text: str, calls: list | None = None) -> int:
        """With auto, how much of the answer's text so far is content that may be streamed: up
        to where a call begins or may still begin; `calls`: the whole answer's (final), all of
        it when there are none."""
        tag = MISTRAL_OPEN if self.parser == "mistral" else HERMES_OPEN
        if calls is not None:
            if not calls:
                return len(text)
            return 0 if self.parser == "llama3_json" else text.find(tag)
        if self.parser == "llama3_json":  # a call is the whole answer, from its first character
            lead = text.lstrip()
            maybe = lead == "" or lead.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(lead)
            return 0 if maybe else len(text)
        start = text.find(tag)
        return start if start >= 0 else len(text) - held_back(text, tag)

    def _call(self, index: int, name: str, arguments: str) -> dict:
        return {"id": self.call_id(index), "type": "function",
                "function": {"name": name, "arguments": arguments}}


def _rooted(schema: dict, key: str) -> dict:
    """`schema` and its definitions as entries of another schema's $defs: itself under `key`,
    each definition D under key__D, their references rewritten to match."""
    def walk(x):
        if isinstance(x, list):
            return [walk(v) for v in x]
        if not isinstance(x, dict):
            return x
        out = {}
        for k, v in x.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                part = v[1:].split("/")
                v = (f"#/$defs/{key}" if v == "#" else
                     f"#/$defs/{key}__{'/'.join(part[2:])}" if part[1:2] in (["$defs"],
                                                                             ["definitions"])
                     else v)
            out[k] = v if k == "$ref" else walk(v)
        return out

    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    root = walk({k: v for k, v in schema.items() if k not in ("$defs", "definitions")})
    return {key: root, **{f"{key}__{name}": walk(d) for name, d in defs.items()}}


def held_back(text: str, tag: str = HERMES_OPEN) -> int:
    """How many of text's last characters may begin `tag` (not yet streamed)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _answer(text: str, start: int, objects: list, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """(the content before `start`, the calls) when `objects` are calls of the request's tools
    ({"name", "arguments" | "parameters"}), at least one; else (the whole text, no calls)."""
    parsed = [_call_of(obj, plan) for obj in objects]
    if not parsed or None in parsed:
        return text, []
    content = text[:start].strip()
    return content or None, [plan._call(i, *call) for i, call in enumerate(parsed)]


def mistral_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """Mistral's calls: [TOOL_CALLS] then a JSON list of {"name": ..., "arguments": ...} for
    tools of the request; the text before it is the content. Anything else is content."""
    start = text.find(MISTRAL_OPEN)
    if start < 0:
        return text, []
    try:
        listed = json.loads(text[start + len(MISTRAL_OPEN):])
    except ValueError:
        return text, []
    return _answer(text, start, listed if isinstance(listed, list) else [None], plan)


def _call_of(call, plan: ToolPlan) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of a parsed {"name", "arguments" | "parameters"} object
    naming one of the request's tools, else None."""
    if not isinstance(call, dict) or call.get("name") not in plan.tools:
        return None
    args = call.get("arguments", call.get("parameters", {}))
    return call["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def llama3_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """Llama 3's JSON calls: the whole answer (after an optional <|python_tag|>) one or more
    {"name": ..., "parameters": ...} objects separated by ";". Anything else is content."""
    body = text.strip().removeprefix(PYTHON_TAG).strip()
    decoder, objects = json.JSONDecoder(), []
    while body.startswith("{"):
        try:
            obj, end = decoder.raw_decode(body)
        except ValueError:
            return text, []
        objects.append(obj)
        rest = body[end:].lstrip()
        if not rest:
            return _answer(text, 0, objects, plan)
        if not rest.startswith(";"):
            return text, []
        body = rest[1:].lstrip()
    return text, []


def hermes_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[dict]]:
    """Hermes-style calls: each <tool_call> block holding {"name": ..., "arguments": ...} for
    a tool of the request is a call; the text before the first block is the content. A block
    that is not such JSON leaves the whole text as content."""
    start = text.find(HERMES_OPEN)
    if start < 0:
        return text, []
    try:
        objects = [json.loads(body) for body in _HERMES.findall(text[start:])]
    except ValueError:
        return text, []
    return _answer(text, start, objects, plan)


def plan_tools(body, parser: str | None) -> ToolPlan | None:
    """The request's ToolPlan, checked (400s name the parameter), or None without tools."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools; give the tools it may call", "tool_choice")
        return None
    tools, template = {}, []
    for i, tool in enumerate(body.tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(fn, dict):
            raise bad_request(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                              "{\"name\": ..., \"parameters\": {...}}}", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(f"tools[{i}].function.name must be 1 to 64 letters, digits, _ or -",
                              "tools")
        if name in tools:
            raise bad_request(f"tools[{i}]: the name {name!r} is given twice", "tools")
        params = fn.get("parameters", NO_PARAMETERS)
        if not isinstance(params, dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema object",
                              "tools")
        tools[name] = params
        template.append({"type": "function", "function": dict(fn, parameters=params)})
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in tools:
            raise bad_request("tool_choice must name one of the tools: {\"type\": \"function\", "
                              f"\"function\": {{\"name\": one of {sorted(tools)}}}}}",
                              "tool_choice")
        return ToolPlan("named", tools, template, name)
    if choice not in ("none", "auto", "required"):
        raise bad_request(f"tool_choice is {choice!r}; it must be none, auto, required or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    if choice == "auto" and parser is None:
        raise bad_request("tool_choice auto (the default with tools) needs a tool-call parser: "
                          "start engine-serve with --enable-auto-tool-choice --tool-call-parser "
                          "hermes (or llama3_json, mistral), or set tool_choice to required, "
                          "none or a tool's name", "tool_choice")
    return ToolPlan(choice, tools, template, parser=parser if choice == "auto" else None)


def template_message(message: dict) -> dict:
    """An assistant message's tool calls as chat templates read them: each call's arguments
    as an object (OpenAI sends them as JSON text)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            try:
                call = dict(call, function=dict(fn, arguments=json.loads(fn["arguments"])))
            except ValueError:
                raise bad_request("a message's tool_calls[].function.arguments is not JSON",
                                  "messages") from None
        out.append(call)
    return dict(message, tool_calls=out)
