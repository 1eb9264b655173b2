"""Turning ModelRunner.generate's arguments into executor requests."""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy
import torch

from kiln import _core
from kiln.builder.errors import KilnError


@dataclass(slots=True)
class GenerationParams:
    max_new_tokens: int
    end_id: int
    pad_id: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    random_seed: int | None
    output_log_probs: bool
    min_tokens: int = 0
    logit_bias: dict | None = None
    allowed_token_ids: list | None = None
    top_log_probs: int = 0
    prompt_log_probs: int | None = None  # k: each prompt token's log-probability, k alternatives
    num_beams: int = 1               # beam search's width (TensorRT-LLM's beam_width); 1 = off
    length_penalty: float = 1.0
    early_stopping: int | bool | str = 1  # 1/True, 0/False (heuristic), 2/"never"

    def __post_init__(self) -> None:
        """Types, as Python ints and floats (numpy and 0-d torch values too), with one-line
        errors rather than a binding's TypeError; the executor checks the ranges."""
        for name in ("max_new_tokens", "end_id", "pad_id", "top_k", "random_seed", "min_tokens",
                     "top_log_probs", "prompt_log_probs", "num_beams"):
            value = getattr(self, name)
            if value is None and name in ("random_seed", "prompt_log_probs"):
                continue
            try:
                if isinstance(value, bool):
                    raise TypeError
                setattr(self, name, operator.index(value))
            except TypeError:
                raise KilnError(f"{name} must be an integer, got {value!r}") from None
        stopping = {True: 1, False: 0, "never": 2}
        if isinstance(self.early_stopping, (bool, str)) and self.early_stopping in stopping:
            self.early_stopping = stopping[self.early_stopping]
        elif not isinstance(self.early_stopping, numbers.Integral):
            raise KilnError("early_stopping must be 1 (True), 0 (False) or 2 (\"never\"), got "
                            f"{self.early_stopping!r}")
        self.early_stopping = int(self.early_stopping)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "length_penalty"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise KilnError(f"{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise KilnError("logit_bias must be a dict of token id -> bias, got "
                                f"{self.logit_bias!r}")
            bias = {}
            for token, value in self.logit_bias.items():
                try:
                    if isinstance(token, bool):
                        raise TypeError
                    token = operator.index(token)
                except TypeError:
                    raise KilnError(f"logit_bias key {token!r} is not a token id") from None
                if not isinstance(value, numbers.Real) or isinstance(value, bool):
                    raise KilnError(f"logit_bias[{token}] must be a number, got {value!r}")
                bias[token] = float(value)
            self.logit_bias = bias
        if self.allowed_token_ids is not None:
            if isinstance(self.allowed_token_ids, (str, bytes)) or not isinstance(
                    self.allowed_token_ids, Sequence):
                raise KilnError("allowed_token_ids must be a list of token ids, got "
                                f"{self.allowed_token_ids!r}")
            if not self.allowed_token_ids:
                raise KilnError("allowed_token_ids is empty; allow at least one token or pass None")
            if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool)
                       for t in self.allowed_token_ids):
                raise KilnError(f"allowed_token_ids must be token ids, got {self.allowed_token_ids!r}")
            self.allowed_token_ids = [int(t) for t in self.allowed_token_ids]

    def sampling_config(self, index: int) -> "_core.SamplingConfig":
        # Greedy (temperature 0 or top_k 1) is passed on as temperature 0, top_k 0; values out
        # of range go on as given, so that the executor refuses the request and says which.
        valid = math.isfinite(self.temperature) and self.temperature >= 0.0 and self.top_k >= 0
        greedy = valid and (self.temperature == 0.0 or self.top_k == 1)
        # One seed for the batch gives each request its own stream, reproducibly. Any integer
        # is a seed: the executor's are 64-bit unsigned, so it is taken modulo 2**64.
        seed = None if self.random_seed is None else (self.random_seed + index) % (1 << 64)
        return _core.SamplingConfig(
            temperature=0.0 if greedy else self.temperature, top_k=0 if greedy else self.top_k,
            top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            seed=seed, min_tokens=self.min_tokens, logit_bias=self.logit_bias or {},
            allowed_token_ids=self.allowed_token_ids or [], beam_width=self.num_beams,
            length_penalty=self.length_penalty, early_stopping=self.early_stopping)


def normalize_inputs(batch_input_ids, tokenizer) -> tuple[list[list[int]], bool]:
    """A batch of prompts as lists of ids; True when they came as strings."""
    if isinstance(batch_input_ids, (str, torch.Tensor)) or not isinstance(batch_input_ids, Sequence):
        if isinstance(batch_input_ids, numpy.ndarray) and batch_input_ids.dtype.kind in "iu":
            batch_input_ids = torch.from_numpy(batch_input_ids)  # rows of integer ids, as a tensor's
        if isinstance(batch_input_ids, torch.Tensor) and batch_input_ids.dim() == 2 \
                and not batch_input_ids.dtype.is_floating_point:
            return [row.tolist() for row in batch_input_ids], False
        raise KilnError("batch_input_ids must be a list of prompts (1-D int tensors, lists of "
                        "token ids, or strings) or a 2-D integer tensor or array")
    if len(batch_input_ids) == 0:
        raise KilnError("batch_input_ids is empty; pass at least one prompt")
    if all(isinstance(p, str) for p in batch_input_ids):
        return [tokenizer.encode(p) for p in batch_input_ids], True
    prompts = []
    for i, p in enumerate(batch_input_ids):
        if isinstance(p, torch.Tensor):
            if p.dim() != 1 or p.dtype.is_floating_point:
                raise KilnError(f"prompt {i} is a {p.dim()}-D {p.dtype} tensor; pass 1-D integer tensors")
            p = p.tolist()
        if isinstance(p, str):
            raise KilnError(f"prompt {i} is a string among token-id prompts; pass all prompts as "
                            "strings or all as token ids")
        if not isinstance(p, Sequence) and not hasattr(p, "__array__"):
            raise KilnError(f"prompt {i} is a {type(p).__name__}; pass a list of token ids, a 1-D "
                            "integer tensor or array, or a string")
        ids = []
        for j, t in enumerate(p):
            if isinstance(t, (bool, numpy.bool_)) or not isinstance(t, (numbers.Integral, numpy.integer)):
                raise KilnError(f"prompt {i} has {t!r} at position {j}; token ids are integers")
            ids.append(int(t))
        prompts.append(ids)
    return prompts, False


def _word_lists(words_list, batch: int, tokenizer,
                what: str = "stop") -> list[list[list[int]]]:
    """Per request, its stop sequences (or with `what` "bad", its bad words). Accepts one list
    for all requests or one per request, each a list of token-id sequences or strings."""
    name = f"{what}_words_list"
    if words_list is None or (isinstance(words_list, (list, tuple)) and not words_list):
        return [[] for _ in range(batch)]
    if not isinstance(words_list, (list, tuple)):
        raise KilnError(f"{name} must be a list of {what} words (strings or lists of "
                        f"token ids), or one such list per prompt; got {words_list!r}")

    def words(items) -> list[list[int]]:
        out = []
        for w in items:
            if not isinstance(w, (str, list, tuple)) or (
                    not isinstance(w, str) and not all(isinstance(t, numbers.Integral) for t in w)):
                raise KilnError(f"{what} word {w!r} is neither a string nor a list of token ids")
            seq = tokenizer.encode(w, add_special_tokens=False) if isinstance(w, str) else list(w)
            if not seq:
                raise KilnError(f"a {what} word is empty; remove it")
            out.append([int(t) for t in seq])
        return out

    per_request = (len(words_list) == batch and all(
        isinstance(x, (list, tuple)) and x and all(isinstance(w, (list, tuple, str)) for w in x)
        for x in words_list))
    if per_request:
        return [words(x) for x in words_list]
    return [words(words_list)] * batch


def make_requests(prompts, params: GenerationParams, stop_words_list, streaming: bool,
                  tokenizer, bad_words_list=None, choices=None, json_table=None,
                  json_schema=None, regex=None, grammar=None) -> list["_core.Request"]:
    """`choices`: token sequences, one of which each output is (guided_choice). `json_table`
    (the vocabulary's `_core.TokenTable`): each output is one JSON object, or with
    `json_schema` (a compiled `_core.JsonSchema`) one JSON value valid against it, with
    `regex` (a compiled `_core.RegexDfa`) text that matches it, or with `grammar` (a compiled
    `_core.Grammar`) a sentence of it."""
    stops = _word_lists(stop_words_list, len(prompts), tokenizer)
    bad = _word_lists(bad_words_list, len(prompts), tokenizer, "bad")
    return [_core.Request(p, max_new_tokens=params.max_new_tokens,
                          sampling_config=params.sampling_config(i), end_id=params.end_id,
                          pad_id=params.pad_id, stop_words=stops[i], streaming=streaming,
                          return_log_probs=params.output_log_probs,
                          num_top_log_probs=params.top_log_probs, bad_words=bad[i],
                          choices=choices or [],
                          json_object=(json_table is not None and json_schema is None
                                       and regex is None and grammar is None),
                          token_table=json_table, json_schema=json_schema,
                          prompt_log_probs=params.prompt_log_probs, regex=regex, grammar=grammar)
            for i, p in enumerate(prompts)]
