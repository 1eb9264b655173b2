"""The request body's generation parameters: each checked, and turned into what the executor
takes. A bad one is a 400 naming it, before anything reaches the executor.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.serve.errors import ApiError, bad_request

MAX_STOP = 16      # stop strings per request


@dataclass(slots=True)
class Limits:
    """What the served engine takes."""
    vocab_size: int
    max_seq_len: int
    eos_id: int | None


def check_vocab(ids, limits: Limits, what: str, param: str) -> None:
    """A 400 naming `param` for the first id of `ids` outside the vocabulary."""
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise bad_request(f"{what} has token id {bad}, outside the vocabulary "
                          f"[0, {limits.vocab_size})", param)


def max_tokens(asked: int | None, longest_prompt: int, limits: Limits, param: str) -> int:
    """The new tokens to ask for: `asked` (the body's `param`), or all the context leaves."""
    room = limits.max_seq_len - longest_prompt
    if room < 1:
        raise ApiError(400, f"the prompt has {longest_prompt} tokens, but this model's maximum "
                       f"context length is {limits.max_seq_len} tokens; shorten the prompt",
                       param="prompt", code="context_length_exceeded")
    if asked is None:
        return room
    if asked < 1:
        raise bad_request(f"{param} is {asked}; ask for at least 1 token", param)
    if asked > room:
        raise ApiError(400, f"this model's maximum context length is {limits.max_seq_len} tokens, "
                       f"but the prompt has {longest_prompt} tokens and {param} asks for {asked} "
                       f"more; shorten the prompt or ask for at most {room}", param=param,
                       code="context_length_exceeded")
    return asked


def stops(stop) -> list[str]:
    """The stop strings (one, or a list)."""
    out = [stop] if isinstance(stop, str) else list(stop or [])
    if len(out) > MAX_STOP:
        raise bad_request(f"stop has {len(out)} strings; pass at most {MAX_STOP}", "stop")
    if any(s == "" for s in out):
        raise bad_request("stop contains an empty string; remove it", "stop")
    return out


def stop_token_ids(ids, limits: Limits) -> list[int]:
    """vLLM's stop_token_ids, checked against the vocabulary."""
    ids = list(ids or [])
    if len(ids) > MAX_STOP:
        raise bad_request(f"stop_token_ids has {len(ids)} ids; pass at most {MAX_STOP}",
                          "stop_token_ids")
    check_vocab(ids, limits, "stop_token_ids", "stop_token_ids")
    return ids


def logit_bias(bias, limits: Limits) -> dict[int, float]:
    """OpenAI's logit_bias (token ids as strings), its ids checked against the vocabulary;
    the executor checks the biases' range."""
    out = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        out[token] = value
    check_vocab(list(out), limits, "logit_bias", "logit_bias")
    return out


def allowed_token_ids(ids, limits: Limits) -> list[int] | None:
    """vLLM's allowed_token_ids, checked against the vocabulary."""
    if ids is None:
        return None
    if not ids:
        raise bad_request("allowed_token_ids is empty; allow at least one token or leave it out",
                          "allowed_token_ids")
    check_vocab(ids, limits, "allowed_token_ids", "allowed_token_ids")
    return ids


def bad_words(words, tokenizer) -> list[list[int]]:
    """vLLM's bad_words: each word's tokens, and those of the word after a space (as it reads
    in the middle of a text) where they differ."""
    out = []
    for w in words or []:
        if not w.strip():
            raise bad_request("bad_words contains an empty word; remove it", "bad_words")
        for text in (w, " " + w.lstrip()):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and ids not in out:
                out.append(ids)
    return out


def guided_choices(choices, tokenizer, new_tokens: int) -> list[list[int]] | None:
    """vLLM's guided_choice: each string's tokens; the answer will be one of them."""
    if choices is None:
        return None
    if not choices:
        raise bad_request("guided_choice is empty; pass at least one choice", "guided_choice")
    if len(choices) > _core.MAX_GUIDED_CHOICES:
        raise bad_request(f"guided_choice has {len(choices)} choices; pass at most "
                          f"{_core.MAX_GUIDED_CHOICES}", "guided_choice")
    out = []
    for c in choices:
        ids = tokenizer.encode(c, add_special_tokens=False)
        if not ids:
            raise bad_request("guided_choice contains an empty choice; remove it", "guided_choice")
        out.append(ids)
    if min(len(ids) for ids in out) > new_tokens:
        raise bad_request(f"every guided_choice is longer than the {new_tokens} tokens asked "
                          "for; ask for more", "guided_choice")
    return out


def json_output(body, tokenizer, limits: Limits, choices) -> tuple:
    """(the vocabulary's token table, the compiled schema or None) when the body asks for JSON
    output: one JSON object (response_format {"type": "json_object"}) or one value valid
    against a schema (response_format {"type": "json_schema", "json_schema": {"schema": ...}},
    or vLLM's guided_json); else (None, None)."""
    fmt = getattr(body, "response_format", None) or {}
    kind = fmt.get("type")
    asked = [name for name, given in (("response_format", kind in ("json_object", "json_schema")),
                                      ("guided_json", body.guided_json is not None)) if given]
    if not asked:
        return None, None
    if len(asked) > 1:
        raise bad_request("response_format and guided_json do not combine; ask for one of them",
                          "guided_json")
    param = asked[0]
    if choices is not None:
        what = f"response_format {kind}" if param == "response_format" else param
        raise bad_request(f"guided_choice and {what} do not combine; ask for one of them", param)
    schema = None
    if param == "guided_json":
        schema = _schema(body.guided_json, "guided_json")
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise bad_request("response_format json_schema needs {\"json_schema\": {\"name\": "
                              "..., \"schema\": {...}}}", "response_format")
        schema = _schema(spec["schema"], "response_format")
    return _token_table(tokenizer, limits, param), schema


def json_output_for(schema: dict, tokenizer, limits: Limits, param: str) -> tuple:
    """(the vocabulary's token table, `schema` compiled) for an answer the server writes as
    JSON itself (tool calls); problems are 400s naming `param`."""
    compiled = _schema(schema, param)
    return _token_table(tokenizer, limits, param), compiled


def text_guide(param: str, text, tokenizer, limits: Limits) -> tuple:
    """(the vocabulary's token table, `text` compiled) for vLLM's guided_regex (a pattern) or
    guided_grammar (EBNF, start rule root), `param`; problems are 400s naming it."""
    from kiln.runtime.grammar import compile_grammar
    from kiln.runtime.regex import compile_regex
    try:
        compiled = (compile_regex if param == "guided_regex" else compile_grammar)(text)
    except KilnError as e:
        raise bad_request(str(e), param) from None
    return _token_table(tokenizer, limits, param), compiled


def _token_table(tokenizer, limits: Limits, param: str):
    """The vocabulary's token bytes guided output needs; a tokenizer without them is a 400
    naming `param`."""
    try:
        return tokenizer.token_table(limits.vocab_size)
    except KilnError as e:
        raise bad_request(str(e), param) from None


def _schema(schema, param: str):
    from kiln.runtime.json_schema import compile_schema
    try:
        return compile_schema(schema)
    except KilnError as e:
        raise bad_request(str(e), param) from None


def truncated(prompts: list[list[int]], keep: int | None, limits: Limits) -> list[list[int]]:
    """vLLM's truncate_prompt_tokens: each prompt's last `keep` tokens (-1: the model's
    context length)."""
    if keep is None:
        return prompts
    if keep == -1:
        keep = limits.max_seq_len
    if keep < 1:
        raise bad_request(f"truncate_prompt_tokens is {keep}; pass k >= 1 (keep each prompt's "
                          "last k tokens) or -1 (the model's context length)",
                          "truncate_prompt_tokens")
    return [p[-keep:] for p in prompts]


def top_count(asked: int | None, param: str) -> int:
    """How many most likely tokens to list beside each generated one (OpenAI's logprobs=k for
    completions, top_logprobs for chat)."""
    if asked is None:
        return 0
    if not 0 <= asked <= _core.MAX_TOP_LOG_PROBS:
        raise bad_request(f"{param} is {asked} but must be between 0 and "
                          f"{_core.MAX_TOP_LOG_PROBS}", param)
    return asked
