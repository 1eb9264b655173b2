"""From an OpenAI request body to executor requests, checked the way TGI checks them.

Every problem becomes a 400 naming the parameter, before anything reaches the executor. The
requests themselves are built by kiln.runtime.requests, as ModelRunner.generate builds them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.requests import GenerationParams, make_requests
from kiln.runtime.serve.detokenizer import TextStream
from kiln.runtime.serve.errors import ApiError, bad_request
from kiln.runtime.serve.protocol import ChatCompletionRequest, CompletionRequest

MAX_CHOICES = 64   # n times the number of prompts, for one HTTP request
MAX_STOP = 16      # stop strings per request


@dataclass(slots=True)
class Limits:
    vocab_size: int
    max_seq_len: int
    eos_id: int | None


@dataclass(slots=True)
class Choice:
    """One sequence the client asked for (a prompt, or one of its n samples)."""
    index: int
    prompt_index: int
    prompt: list[int]
    request: "_core.Request"
    text: TextStream
    tokens: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    top_log_probs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    last_token_at: float = 0.0
    echo: str = ""  # the prompt's text, put before the answer (completions' echo)


def check_vocab(ids, limits: Limits, what: str, param: str) -> None:
    """A 400 naming `param` for the first id of `ids` outside the vocabulary."""
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise bad_request(f"{what} has token id {bad}, outside the vocabulary "
                          f"[0, {limits.vocab_size})", param)


def completion_prompts(body: CompletionRequest, tokenizer, limits: Limits) -> list[list[int]]:
    p = body.prompt
    if isinstance(p, str):
        prompts = [tokenizer.encode(p)]
    elif p and all(isinstance(x, str) for x in p):
        prompts = [tokenizer.encode(x) for x in p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    else:
        prompts = [list(x) for x in p]
    if not prompts:
        raise bad_request("prompt is empty; pass a string, a list of strings or token ids", "prompt")
    for i, ids in enumerate(prompts):
        if not ids:
            raise bad_request(f"prompt {i} is empty (it encodes to no tokens)", "prompt")
        check_vocab(ids, limits, f"prompt {i}", "prompt")
    return prompts


def chat_prompt(messages, tokenizer, add_generation_prompt: bool = True) -> list[int]:
    """`messages` (ChatMessage) in the tokenizer's chat template, as token ids."""
    if not messages:
        raise bad_request("messages is empty; pass at least one message", "messages")
    hf = tokenizer.hf
    if not hf.chat_template:
        raise bad_request("this model's tokenizer has no chat template; use /v1/completions",
                          "messages", "no_chat_template")
    messages = [m.as_template_message() for m in messages]
    try:
        ids = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                     tokenize=True)
    except Exception as e:  # the template's own checks (roles, order) raise from Jinja
        raise bad_request(f"the chat template refused the messages: {e}", "messages") from None
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return list(ids)


def _max_tokens(asked: int | None, longest_prompt: int, limits: Limits, param: str) -> int:
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


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise bad_request(f"stop has {len(stops)} strings; pass at most {MAX_STOP}", "stop")
    if any(s == "" for s in stops):
        raise bad_request("stop contains an empty string; remove it", "stop")
    return stops


def _stop_token_ids(ids, limits: Limits) -> list[int]:
    ids = list(ids or [])
    if len(ids) > MAX_STOP:
        raise bad_request(f"stop_token_ids has {len(ids)} ids; pass at most {MAX_STOP}",
                          "stop_token_ids")
    check_vocab(ids, limits, "stop_token_ids", "stop_token_ids")
    return ids


def _logit_bias(bias, limits: Limits) -> dict[int, float]:
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


def _allowed(ids, limits: Limits) -> list[int] | None:
    """vLLM's allowed_token_ids, checked against the vocabulary."""
    if ids is None:
        return None
    if not ids:
        raise bad_request("allowed_token_ids is empty; allow at least one token or leave it out",
                          "allowed_token_ids")
    check_vocab(ids, limits, "allowed_token_ids", "allowed_token_ids")
    return ids


def _bad_words(words, tokenizer) -> list[list[int]]:
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


def _choices(choices, tokenizer, new_tokens: int) -> list[list[int]] | None:
    """vLLM's guided_choice: each string's tokens; the answer will be one of them."""
    if choices is None:
        return None
    if not choices:
        raise bad_request("guided_choice is empty; pass at least one choice", "guided_choice")
    if len(choices) > _core.MAX_CHOICES:
        raise bad_request(f"guided_choice has {len(choices)} choices; pass at most "
                          f"{_core.MAX_CHOICES}", "guided_choice")
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


def _truncated(prompts: list[list[int]], keep: int | None, limits: Limits) -> list[list[int]]:
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


def plan(body, prompts: list[list[int]], max_tokens: int | None, tokenizer, limits: Limits,
         want_log_probs: bool, top: int = 0) -> list[Choice]:
    """The executor requests for `prompts`, n of each, with the body's sampling parameters;
    `top`: the most likely tokens to list beside each generated one."""
    if not 1 <= body.n <= MAX_CHOICES:
        raise bad_request(f"n is {body.n}; it must be between 1 and {MAX_CHOICES}", "n")
    if body.n * len(prompts) > MAX_CHOICES:
        raise bad_request(f"{len(prompts)} prompts times n={body.n} asks for more than "
                          f"{MAX_CHOICES} completions in one request; split it", "n")
    prompts = _truncated(prompts, body.truncate_prompt_tokens, limits)
    param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    new_tokens = _max_tokens(max_tokens, max(len(p) for p in prompts), limits, param)
    stops = _stops(body.stop)
    stop_ids = _stop_token_ids(body.stop_token_ids, limits)
    end_id = -1 if body.ignore_eos or limits.eos_id is None else limits.eos_id
    params = GenerationParams(
        max_new_tokens=new_tokens, end_id=end_id, pad_id=max(end_id, 0),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=body.top_k or 0, top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0, random_seed=body.seed,
        output_log_probs=want_log_probs, min_tokens=body.min_tokens,
        logit_bias=_logit_bias(body.logit_bias, limits),
        allowed_token_ids=_allowed(body.allowed_token_ids, limits), top_log_probs=top)
    if params.top_k < 0:
        raise bad_request(f"top_k is {params.top_k} but must be >= 0 (0 = off)", "top_k")
    problem = params.sampling_config(0).validate()
    if problem:
        raise bad_request(problem, problem.split(" ", 1)[0].split("[", 1)[0])
    if params.min_tokens > new_tokens:
        limit = (f"{param} is {new_tokens}" if max_tokens is not None else
                 f"the prompt leaves room for {new_tokens} in this model's context")
        raise bad_request(f"min_tokens is {params.min_tokens} but {limit}; ask for at most "
                          f"{new_tokens}", "min_tokens")
    expanded = [(i, p) for i, p in enumerate(prompts) for _ in range(body.n)]
    try:
        # Streaming requests even for a single JSON answer: stop strings are matched on the text
        # as it grows, and the request is cancelled as soon as one matches.
        # min_tokens holds back end of text and the one-token stops and keeps any stop from
        # ending a request early, in the executor and in the stop strings' text match alike.
        # stop_token_ids end a request as its stop strings' tokens do (the executor's stop
        # words); the token stays in the output, its text too unless it is a special token.
        words = stops + [[t] for t in stop_ids]
        bad = _bad_words(body.bad_words, tokenizer)
        requests = make_requests([p for _, p in expanded], params,
                                 [words] * len(expanded) if words else None, True, tokenizer,
                                 [bad] * len(expanded) if bad else None,
                                 _choices(body.guided_choice, tokenizer, new_tokens))
    except KilnError as e:
        raise bad_request(str(e), "stop") from None
    decode = (tokenizer.decode if body.skip_special_tokens else
              functools.partial(tokenizer.decode, skip_special_tokens=False))
    return [Choice(i, k, p, r, TextStream(decode, stops, params.min_tokens,
                                               body.include_stop_str_in_output))
            for i, ((k, p), r) in enumerate(zip(expanded, requests))]


def _top_count(asked: int | None, param: str) -> int:
    """How many most likely tokens to list beside each generated one (OpenAI's logprobs=k for
    completions, top_logprobs for chat)."""
    if asked is None:
        return 0
    if not 0 <= asked <= _core.MAX_TOP_LOG_PROBS:
        raise bad_request(f"{param} is {asked} but must be between 0 and "
                          f"{_core.MAX_TOP_LOG_PROBS}", param)
    return asked


def plan_completion(body: CompletionRequest, tokenizer, limits: Limits) -> list[Choice]:
    prompts = completion_prompts(body, tokenizer, limits)
    top = _top_count(body.logprobs, "logprobs")
    choices = plan(body, prompts, body.max_tokens, tokenizer, limits, body.logprobs is not None,
                   top)
    if body.echo:
        # A prompt sent as text comes back as sent; as token ids, or cut by
        # truncate_prompt_tokens, as the text of the ids the model saw.
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        for c in choices:
            sent = texts[c.prompt_index]
            whole = isinstance(sent, str) and len(c.prompt) == len(prompts[c.prompt_index])
            c.echo = sent if whole else tokenizer.decode(c.prompt)
    return choices


def plan_chat(body: ChatCompletionRequest, tokenizer, limits: Limits) -> list[Choice]:
    prompt = chat_prompt(body.messages, tokenizer)
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = _top_count(body.top_logprobs, "top_logprobs")
    if top and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    return plan(body, [prompt], asked, tokenizer, limits, body.logprobs, top)
