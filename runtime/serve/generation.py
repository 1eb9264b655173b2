"""From an OpenAI request body to executor requests, checked the way TGI checks them.

Every problem becomes a 400 naming the parameter, before anything reaches the executor. The
requests themselves are built by kiln.runtime.requests, as ModelRunner.generate builds them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from kiln import _core
from kiln.builder.errors import KilnError
from kiln.runtime.requests import GenerationParams, make_requests
from kiln.runtime.serve import parameters
from kiln.runtime.serve.detokenizer import TextStream
from kiln.runtime.serve.errors import bad_request
from kiln.runtime.serve.parameters import Limits, check_vocab
from kiln.runtime.serve.protocol import ChatCompletionRequest, CompletionRequest
from kiln.runtime.serve.tools import ToolPlan, plan_tools

MAX_CHOICES = 64   # n times the number of prompts, for one HTTP request


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
    beam: int | None = None  # with beam search: which of its request's beams this choice is
    echo_sent: bool = False
    streamed_chars: int = 0  # completions: the choice's text streamed so far (text_offset's start)
    tools: "ToolPlan | None" = None  # what a chat request's tools make of the answer
    sent: str = ""  # with tools: the answer's text streamed so far (as content or arguments)
    # with prompt log-probabilities asked for: prompt tokens 1, 2, ...'s, their ranks, and the
    # most likely tokens at each of those positions
    prompt_log_probs: list[float] = field(default_factory=list)
    prompt_ranks: list[int] = field(default_factory=list)
    prompt_top_log_probs: list[list[tuple[int, float]]] = field(default_factory=list)


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


def chat_prompt(messages, tokenizer, add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> list[int]:
    """`messages` (ChatMessage) in the tokenizer's chat template, as token ids; `tools` (OpenAI's
    form) passed to the template too."""
    if not messages:
        raise bad_request("messages is empty; pass at least one message", "messages")
    hf = tokenizer.hf
    if not hf.chat_template:
        raise bad_request("this model's tokenizer has no chat template; use /v1/completions",
                          "messages", "no_chat_template")
    messages = [m.as_template_message() for m in messages]
    try:
        extra = {"tools": tools} if tools else {}
        ids = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                     tokenize=True, **extra)
    except Exception as e:  # the template's own checks (roles, order) raise from Jinja
        raise bad_request(f"the chat template refused the messages: {e}", "messages") from None
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return list(ids)


def plan(body, prompts: list[list[int]], max_tokens: int | None, tokenizer, limits: Limits,
         want_log_probs: bool, top: int = 0, prompt_top: int | None = None,
         tools: "ToolPlan | None" = None) -> list[Choice]:
    """The executor requests for `prompts`, n of each, with the body's sampling parameters;
    `top`: the most likely tokens to list beside each generated one; `prompt_top`: with a
    value, each prompt token is scored, with this many most likely tokens beside it. A
    completion's best_of > n makes best_of candidates a prompt (with beam search, best_of
    beams), of which select_best keeps the n best."""
    if not 1 <= body.n <= MAX_CHOICES:
        raise bad_request(f"n is {body.n}; it must be between 1 and {MAX_CHOICES}", "n")
    best_of = getattr(body, "best_of", None) or body.n
    if best_of < body.n:
        raise bad_request(f"best_of is {best_of} but must be at least n ({body.n})", "best_of")
    if best_of * len(prompts) > MAX_CHOICES:
        what = f"best_of={best_of}" if best_of > body.n else f"n={body.n}"
        raise bad_request(f"{len(prompts)} prompts times {what} asks for more than "
                          f"{MAX_CHOICES} completions in one request; split it",
                          "best_of" if best_of > body.n else "n")
    prompts = parameters.truncated(prompts, body.truncate_prompt_tokens, limits)
    param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    new_tokens = parameters.max_tokens(max_tokens, max(len(p) for p in prompts), limits, param)
    stops = parameters.stops(body.stop)
    stop_ids = parameters.stop_token_ids(body.stop_token_ids, limits)
    end_id = -1 if body.ignore_eos or limits.eos_id is None else limits.eos_id
    params = GenerationParams(
        max_new_tokens=new_tokens, end_id=end_id, pad_id=max(end_id, 0),
        temperature=(body.temperature if body.temperature is not None else
                     0.0 if body.use_beam_search else 1.0),
        top_k=body.top_k or 0, top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0, random_seed=body.seed,
        output_log_probs=want_log_probs or best_of > body.n, min_tokens=body.min_tokens,
        logit_bias=parameters.logit_bias(body.logit_bias, limits),
        allowed_token_ids=parameters.allowed_token_ids(body.allowed_token_ids, limits),
        top_log_probs=top, prompt_log_probs=prompt_top,
        num_beams=best_of if body.use_beam_search else 1, length_penalty=body.length_penalty,
        early_stopping=body.early_stopping)
    if body.use_beam_search and not 1 <= best_of <= _core.MAX_BEAM_WIDTH:
        what = "best_of" if best_of > body.n else "n"
        raise bad_request(f"{what} is {best_of}; beam search takes that many beams, between 1 "
                          f"and {_core.MAX_BEAM_WIDTH}", what)
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
    # Beam search: one request a prompt, whose n beams are its n choices.
    copies = 1 if body.use_beam_search else best_of
    expanded = [(i, p) for i, p in enumerate(prompts) for _ in range(copies)]
    bad = parameters.bad_words(body.bad_words, tokenizer)
    choices = parameters.guided_choices(body.guided_choice, tokenizer, new_tokens)
    json_table, json_schema = parameters.json_output(body, tokenizer, limits, choices)
    if tools is not None and tools.schema is not None:
        if json_table is not None or choices is not None:
            raise bad_request(f"tool_choice {tools.mode} writes the answer as JSON for the tools; "
                              "it does not combine with response_format, guided_json or "
                              "guided_choice", "tool_choice")
        json_table, json_schema = parameters.json_output_for(tools.schema, tokenizer, limits,
                                                             "tools")
    regex = grammar = None
    for param, text in (("guided_regex", body.guided_regex),
                        ("guided_grammar", body.guided_grammar)):
        if text is None:
            continue
        taken = ("guided_choice" if choices is not None else
                 f"tool_choice {tools.mode}" if tools is not None and tools.schema else
                 "guided_regex" if regex is not None else
                 "response_format or guided_json" if json_table is not None else None)
        if taken:
            raise bad_request(f"{param} and {taken} do not combine; ask for one of them", param)
        json_table, compiled = parameters.text_guide(param, text, tokenizer, limits)
        if param == "guided_regex":
            regex = compiled
        else:
            grammar = compiled
    try:
        # Streaming requests even for a single JSON answer: stop strings are matched on the text
        # as it grows, and the request is cancelled as soon as one matches.
        # min_tokens holds back end of text and the one-token stops and keeps any stop from
        # ending a request early, in the executor and in the stop strings' text match alike.
        # stop_token_ids end a request as its stop strings' tokens do (the executor's stop
        # words); the token stays in the output, its text too unless it is a special token.
        words = stops + [[t] for t in stop_ids]
        # A beam search answers once, at its end.
        requests = make_requests([p for _, p in expanded], params,
                                 [words] * len(expanded) if words else None,
                                 not body.use_beam_search, tokenizer,
                                 [bad] * len(expanded) if bad else None, choices, json_table,
                                 json_schema, regex, grammar)
    except KilnError as e:
        raise bad_request(str(e), "stop") from None
    decode = (tokenizer.decode if body.skip_special_tokens else
              functools.partial(tokenizer.decode, skip_special_tokens=False))
    def stream():
        return TextStream(decode, stops, params.min_tokens, body.include_stop_str_in_output)

    if body.use_beam_search:  # the n best beams
        choices = [Choice(k * body.n + b, k, p, r, stream(), beam=b)
                   for k, ((_, p), r) in enumerate(zip(expanded, requests)) for b in range(body.n)]
    else:
        choices = [Choice(i, k, p, r, stream())
                   for i, ((k, p), r) in enumerate(zip(expanded, requests))]
    for c in choices:  # each choice's calls get ids of their own
        c.tools = None if tools is None else replace(tools, ids=[])
    return choices


def select_best(choices: list[Choice], n: int) -> list[Choice]:
    """Of each prompt's candidates (best_of of them), the n with the highest cumulative
    log-probability, best first, numbered as n choices a prompt are."""
    by_prompt: dict[int, list[Choice]] = {}
    for c in choices:
        by_prompt.setdefault(c.prompt_index, []).append(c)
    out = []
    for k in sorted(by_prompt):
        ranked = sorted(by_prompt[k], key=lambda c: -sum(c.log_probs))[:n]
        for j, c in enumerate(ranked):
            c.index = k * n + j
            out.append(c)
    return out


def plan_completion(body: CompletionRequest, tokenizer, limits: Limits) -> list[Choice]:
    prompts = completion_prompts(body, tokenizer, limits)
    top = parameters.top_count(body.logprobs, "logprobs")
    prompt_top = _prompt_top(body)
    if body.echo and body.logprobs is not None:  # the prompt's tokens listed first, scored
        prompt_top = max(top, prompt_top or 0)
    choices = plan(body, prompts, body.max_tokens, tokenizer, limits, body.logprobs is not None,
                   top, prompt_top)
    if body.echo:
        # A prompt sent as text comes back as sent; as token ids, or cut by
        # truncate_prompt_tokens, as the text of the ids the model saw.
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        for c in choices:
            sent = texts[c.prompt_index]
            whole = isinstance(sent, str) and len(c.prompt) == len(prompts[c.prompt_index])
            c.echo = sent if whole else tokenizer.decode(c.prompt)
    return choices


def plan_chat(body: ChatCompletionRequest, tokenizer, limits: Limits,
              tool_parser: str | None = None) -> list[Choice]:
    tools = plan_tools(body, tool_parser)
    prompt = chat_prompt(body.messages, tokenizer, tools=tools.template_tools if tools else None)
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = parameters.top_count(body.top_logprobs, "top_logprobs")
    if top and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    return plan(body, [prompt], asked, tokenizer, limits, body.logprobs, top, _prompt_top(body),
                tools)


def _prompt_top(body) -> int | None:
    """vLLM's prompt_logprobs: None, or how many most likely tokens to list at each prompt one."""
    if body.prompt_logprobs is None:
        return None
    return parameters.top_count(body.prompt_logprobs, "prompt_logprobs")
