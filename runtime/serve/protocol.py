"""OpenAI request bodies for /v1/completions and /v1/chat/completions.

Field names and defaults follow OpenAI's API; `top_k`, `min_p`, `repetition_penalty`,
`ignore_eos` and `stop_token_ids` are the extensions vLLM made familiar (pass them through the
client's extra_body). Fields the server cannot honour, OpenAI's or vLLM's, are refused with a
400 rather than silently ignored; fields that change nothing in the output (`user`, `store`,
`metadata`, ...) are accepted and ignored. Values are taken as JSON types them, as OpenAI takes
them: `"max_tokens": true`, `"n": "2"`, `"stream": "yes"` or `"max_tokens": 16.0` are a 400, not
read as 1, 2, true and 16.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kiln.runtime.serve.errors import ApiError, bad_request


_INT64 = 2 ** 63  # a seed is a signed 64-bit integer, as vLLM takes it
# Roles whose message says something only in its content: one without content is a mistake.
_CONTENT_REQUIRED = {"system", "developer", "user", "tool"}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model_config = ConfigDict(extra="ignore")  # strict, as _Strict

    model: str | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(None, ge=-_INT64, le=_INT64 - 1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    user: str | None = None
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = None
    allowed_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    bad_words: list[str] | None = None
    guided_choice: list[str] | None = None
    # {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema":
    # {"name": ..., "schema": {...}, "strict": ...}}
    response_format: dict | None = None
    guided_json: Any = None  # vLLM's: a JSON schema (an object or its JSON text)
    prompt_logprobs: int | None = None  # vLLM's: each prompt token's log-probability, k more
    use_beam_search: bool = False  # vLLM's: best_of (or n) beams, the n best the choices
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = True
    guided_regex: str | None = None  # vLLM's: the whole output matches this pattern
    guided_grammar: str | None = None  # vLLM's: the whole output is a sentence of this EBNF

    def unsupported(self) -> list[tuple[str, str]]:
        """(param, why) for each field asked for that the server cannot do."""
        out = []
        if self.use_beam_search and self.stream:
            out.append(("use_beam_search", "beam search returns its beams at the end and does "
                                           "not stream; drop stream or use_beam_search"))
        if self.prompt_logprobs is not None and self.stream:
            out.append(("prompt_logprobs", "prompt_logprobs is not available with stream; drop "
                                           "one of them"))
        if self.response_format and self.response_format.get("type") not in (
                None, "text", "json_object", "json_schema"):
            out.append(("response_format", "response_format's type must be text, json_object or "
                                           "json_schema"))
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.best_of is not None and self.best_of > self.n and self.stream:
            out.append(("best_of", "best_of > n picks the best completions at the end and "
                                   "cannot be streamed; drop stream or best_of"))
        if self.suffix:
            out.append(("suffix", "suffix (insertion) is not supported; remove it"))
        return out


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... reach the chat template

    role: str
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _has_content(self):
        if self.content is None and self.role in _CONTENT_REQUIRED:
            raise ValueError(f"a {self.role} message needs its content; pass content")
        return self

    def as_template_message(self) -> dict:
        from kiln.runtime.serve.tools import template_message
        msg = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            msg["content"] = "".join(p.text for p in self.content)
        return template_message(msg)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None  # accepted: required may call several tools
    functions: list[dict] | None = None
    function_call: str | dict | None = None
    modalities: list[str] | None = None
    prediction: dict | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.functions or self.function_call not in (None, "none", "auto"):
            param = "functions" if self.functions else "function_call"
            out.append((param, "the legacy functions and function_call are not supported; "
                               "pass them as tools and tool_choice"))
        if self.modalities and set(self.modalities) != {"text"}:
            out.append(("modalities", "only text output is supported; remove modalities or "
                                      "pass [\"text\"]"))
        if self.prediction is not None:
            out.append(("prediction", "predicted outputs are not supported; remove "
                                      "prediction"))
        return out


class TokenizeRequest(_Strict):
    """vLLM's /tokenize: a prompt, or chat messages in the chat template."""
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    def unsupported(self) -> list[tuple[str, str]]:
        return []


class DetokenizeRequest(_Strict):
    """vLLM's /detokenize: token ids to text."""
    model: str | None = None
    tokens: list[int]

    def unsupported(self) -> list[tuple[str, str]]:
        return []


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _is_type_tag(part) -> bool:
    """Pydantic names the member of a union it tried in the error's location."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part[:1].isupper())


def _describe(errors: list[dict]) -> tuple[str, str | None]:
    """One line for the first bad field, and the field's name."""
    loc = errors[0]["loc"]
    path = [p for p in loc if not _is_type_tag(p)]
    where = ".".join(str(p) for p in path) or "body"
    tried = []  # the union members pydantic tried at this field, when it is a union
    for e in errors:
        field_path = [p for p in e["loc"] if not _is_type_tag(p)]
        if (field_path[: len(path)] == path and len(e["loc"]) > len(path)
                and _is_type_tag(e["loc"][len(path)])):
            tried.append(e["loc"][len(path)])
    if len(set(tried)) > 1:  # a union: none of its members fit
        return f"{where} must be one of: {' | '.join(dict.fromkeys(tried))}", where
    if errors[0]["type"] == "missing":
        return f"{where} is required", where
    if errors[0]["type"] == "value_error":  # a model's own check: its message says it all
        return f"{where}: {errors[0]['ctx']['error']}", where
    return f"{where} is invalid: {errors[0]['msg']}", where


def parse(model: type[BaseModel], body):
    """The request body as `model`, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        parsed = model.model_validate(body)
    except ValidationError as e:
        raise bad_request(*_describe(e.errors())) from None
    problems = parsed.unsupported()
    if problems:
        param, why = problems[0]
        raise ApiError(400, why, param=param, code="unsupported_parameter")
    return parsed
