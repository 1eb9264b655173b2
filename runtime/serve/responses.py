"""OpenAI response bodies: whole answers and streamed chunks, for completions and chat."""
from __future__ import annotations

import time
import uuid


# The executor's finish reasons in OpenAI's words.
FINISH_REASONS = {"end_id": "stop", "stop_words": "stop", "stop": "stop", "length": "length",
                  "cancelled": "abort"}


def usage(choices) -> dict:
    prompt = sum({c.prompt_index: len(c.prompt) for c in choices}.values())  # n samples: once
    completion = sum(len(c.tokens) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _by_text(pairs) -> dict[str, float]:
    """{text: log-probability}; of tokens that read the same, the first (most likely) one."""
    out: dict[str, float] = {}
    for text, lp in pairs:
        out.setdefault(text, lp)
    return out


class ResponseFormat:
    object_name = ""
    chunk_name = ""
    id_prefix = ""

    def __init__(self, model: str, tokenizer, want_log_probs: bool, top: int = 0,
                 prompt_top: int | None = None) -> None:
        """`top`: alternatives asked for beside each token; `prompt_top`: vLLM's prompt_logprobs."""
        self.model = model
        self.tokenizer = tokenizer
        self.want_log_probs = want_log_probs
        self.top = top
        self.prompt_top = prompt_top
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, name: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": name, "created": self.created, "model": self.model,
                "choices": choices}

    def whole(self, choices, counted=None) -> dict:
        """The answer of `choices`; `counted`: every candidate generated (best_of), for usage."""
        body = self._envelope(self.object_name, [self.choice(c) for c in choices])
        body["usage"] = usage(counted if counted is not None else choices)
        return body

    def usage_chunk(self, choices) -> dict:
        body = self._envelope(self.chunk_name, [])
        body["usage"] = usage(choices)
        return body

    def _token_texts(self, tokens) -> list[str]:
        return [self.tokenizer.decode([t]) for t in tokens]

    def _alternatives(self, tops, k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per token, its (k) most likely tokens as (text, log-probability)."""
        return [[(self.tokenizer.decode([t]), lp) for t, lp in top[:k]] for top in tops]

    def prompt_logprobs(self, c) -> list | None:
        """vLLM's prompt_logprobs: None for the first prompt token, then per token {id: {logprob,
        rank, decoded_token}} for it and the prompt_top most likely tokens there."""
        out: list = [None]
        for i, token in enumerate(c.prompt[1:]):
            here = {str(token): {"logprob": c.prompt_log_probs[i], "rank": c.prompt_ranks[i],
                                 "decoded_token": self.tokenizer.decode([token])}}
            tops = c.prompt_top_log_probs[i] if c.prompt_top_log_probs else []
            for rank, (t, lp) in enumerate(tops[: self.prompt_top], start=1):
                here.setdefault(str(t), {"logprob": lp, "rank": rank,
                                         "decoded_token": self.tokenizer.decode([t])})
            out.append(here)
        return out

    # per kind
    def choice(self, c) -> dict:
        raise NotImplementedError

    def chunk(self, c, text: str, tokens, log_probs, finish_reason: str | None) -> dict:
        """`log_probs`: (the tokens' log-probabilities, their alternatives when asked for)."""
        raise NotImplementedError

    def chunks(self, c, text: str, tokens, log_probs, finish_reason: str | None) -> list[dict]:
        """The chunks a response of choice c streams."""
        return [self.chunk(c, text, tokens, log_probs, finish_reason)]

    def start_chunks(self, choices) -> list[dict]:
        return []


class CompletionFormat(ResponseFormat):
    object_name = chunk_name = "text_completion"
    id_prefix = "cmpl"

    def _log_probs(self, tokens, log_probs, offset: int = 0) -> dict | None:
        """`offset`: where the first token's text starts in the choice's text (text_offset
        counts on by each token's text, as vLLM's does)."""
        if not self.want_log_probs:
            return None
        lps, tops = log_probs
        texts = self._token_texts(tokens)
        top = None
        if self.top and tops:  # each position's alternatives and the token taken there (OpenAI's)
            top = [_by_text(alts + [(s, lp)])
                   for alts, s, lp in zip(self._alternatives(tops, self.top), texts, lps)]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": texts, "token_logprobs": list(lps), "top_logprobs": top,
                "text_offset": offsets}

    def _echo_log_probs(self, c) -> dict | None:
        """With echo, the prompt's part of logprobs: its first token unscored (null), as OpenAI
        lists it."""
        tops = [[]] + list(c.prompt_top_log_probs) if self.top else []
        scored = self._log_probs(c.prompt, ([None] + list(c.prompt_log_probs), tops))
        if scored and scored["top_logprobs"]:
            scored["top_logprobs"][0] = None
        return scored

    def choice(self, c) -> dict:
        prompt = self._echo_log_probs(c) if c.echo else None
        after_prompt = sum(len(t) for t in prompt["tokens"]) if prompt else 0
        log_probs = self._log_probs(c.tokens, (c.log_probs, c.top_log_probs), after_prompt)
        if log_probs and c.echo:
            for key in ("tokens", "token_logprobs", "text_offset"):
                log_probs[key] = prompt[key] + log_probs[key]
            if self.top:
                generated = log_probs["top_logprobs"] or []
                log_probs["top_logprobs"] = prompt["top_logprobs"] + generated
        body = {"index": c.index, "text": c.echo + c.text.text, "logprobs": log_probs,
                "finish_reason": FINISH_REASONS.get(c.finish_reason, c.finish_reason)}
        if self.prompt_top is not None:
            body["prompt_logprobs"] = self.prompt_logprobs(c)
        return body

    def chunk(self, c, text, tokens, log_probs, finish_reason) -> dict:
        """A streamed chunk's text_offset starts where the choice's text streamed so far ends."""
        scored = self._log_probs(tokens, log_probs, c.streamed_chars)
        c.streamed_chars += len(text)
        return self._envelope(self.chunk_name, [{
            "index": c.index, "text": text, "logprobs": scored,
            "finish_reason": FINISH_REASONS.get(finish_reason, finish_reason)}])

    def chunks(self, c, text, tokens, log_probs, finish_reason) -> list[dict]:
        """With echo, a choice's prompt text (and its log-probabilities) first."""
        out = []
        if c.echo and not c.echo_sent:
            c.echo_sent = True
            c.streamed_chars += len(c.echo)
            out.append(self._envelope(self.chunk_name, [{
                "index": c.index, "text": c.echo, "logprobs": self._echo_log_probs(c),
                "finish_reason": None}]))
        return out + [self.chunk(c, text, tokens, log_probs, finish_reason)]


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def _log_probs(self, tokens, log_probs) -> dict | None:
        if not self.want_log_probs:
            return None
        lps, tops = log_probs
        alternatives = self._alternatives(tops) if tops else [[] for _ in lps]
        return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()),
                             "top_logprobs": [{"token": a, "logprob": alp,
                                               "bytes": list(a.encode())} for a, alp in alts]}
                            for s, lp, alts in zip(self._token_texts(tokens), lps, alternatives)]}

    def whole(self, choices, counted=None) -> dict:
        body = super().whole(choices, counted)
        if self.prompt_top is not None:  # one prompt for all choices (vLLM's place for it)
            body["prompt_logprobs"] = self.prompt_logprobs(choices[0])
        return body

    def choice(self, c) -> dict:
        message = {"role": "assistant", "content": c.text.text}
        finish = FINISH_REASONS.get(c.finish_reason, c.finish_reason)
        if c.tools is not None and c.tools.mode != "none":
            message["content"], calls = c.tools.calls(c.text.text)
            if calls:
                message["tool_calls"] = calls
                finish = "tool_calls" if c.tools.mode != "named" else finish
        return {"index": c.index, "message": message,
                "logprobs": self._log_probs(c.tokens, (c.log_probs, c.top_log_probs)),
                "finish_reason": finish}

    def start_chunks(self, choices) -> list[dict]:
        return [self._envelope(self.chunk_name, [{
            "index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
            "finish_reason": None}]) for c in choices]

    def chunk(self, c, text, tokens, log_probs, finish_reason) -> dict:
        finish = FINISH_REASONS.get(finish_reason, finish_reason)
        if c.tools is not None and c.tools.mode != "none":
            delta, finish = _tool_delta(c, text, finish_reason is not None, finish)
        else:
            delta = {"content": text} if text or not finish_reason else {}
        return self._envelope(self.chunk_name, [{
            "index": c.index, "delta": delta, "logprobs": self._log_probs(tokens, log_probs),
            "finish_reason": finish}])


def _tool_delta(c, text: str, final: bool, finish: str | None) -> tuple[dict, str | None]:
    """(a streamed chunk's delta, its finish reason) for a choice whose tools shape the answer:
    a named call's arguments as they come (its id and name first); with required, the calls
    at the end; with auto, the content until a call may begin, the calls at the end."""
    plan, whole = c.tools, c.text.text
    if plan.mode == "named":
        call = {"index": 0, "function": {"arguments": text}}
        if not plan.ids:
            call.update(id=plan.call_id(0), type="function")
            call["function"] = {"name": plan.name, "arguments": text}
        return {"tool_calls": [call]} if text or call.get("id") else {}, finish
    delta: dict = {}
    calls = plan.calls(whole)[1] if final else None  # read once, from the whole answer
    if plan.mode == "auto":
        safe = plan.content_end(whole, calls)
        if safe > len(c.sent):
            piece = whole[len(c.sent): safe]
            c.sent = whole[:safe]
            if piece.strip() or not calls:
                delta["content"] = piece
    if calls:
        delta["tool_calls"] = [dict(call, index=i) for i, call in enumerate(calls)]
        finish = "tool_calls"
    elif final and plan.mode == "required" and whole:
        delta["content"] = whole
    return delta, finish
