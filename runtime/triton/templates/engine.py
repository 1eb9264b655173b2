"""Kiln engine model for Triton's Python backend (decoupled: responses stream).

Every Triton request goes into one Kiln executor, which batches them in flight. One thread
sends each executor response back through the request's response sender and cancels the
requests whose clients cancelled. Parameters come from config.pbtxt: engine_dir, max_batch_size,
max_num_tokens, kv_cache_free_gpu_memory_fraction, enable_kv_cache_reuse, device.

Decoding is greedy unless `temperature` > 0 is given; then runtime_top_k (0 = off),
runtime_top_p, runtime_min_p and the penalties shape sampling, seeded by random_seed.
embedding_bias (TensorRT-LLM's: one value a token id, added to the logits) becomes the
executor's logit bias; guided_decoding_guide_type "json" makes the output one JSON object,
"json_schema" one JSON value valid against the schema in guided_decoding_guide, "regex"
text that matches the pattern in guided_decoding_guide, and "ebnf_grammar" a sentence of the
EBNF grammar there (GBNF, start rule root). beam_width > 1 runs a beam search
(greedy; len_penalty, early_stopping as TensorRT-LLM's) that answers once, with every beam.
Responses carry only generated tokens (never the prompt), per beam ([beam, tokens]; one beam
without beam search): in streaming mode the tokens new since the last response, otherwise all
of them in one final response.
"""
import json
import queue
import threading
import time
from typing import NamedTuple

import numpy as np
import triton_python_backend_utils as pb_utils

# Postprocessing decodes each response with this many tokens sent before it.
from kiln.runtime.serve.detokenizer import CONTEXT_TOKENS

POLL_S = 0.02  # how often cancelled requests are looked for
NOT_FINISHED = "not_finished"


class _Stream:
    """One Triton request in flight."""

    __slots__ = ("sender", "prompt_len", "pad_id", "log_probs", "num_sent", "tail",
                 "cum_log_prob", "cancelling")

    def __init__(self, sender, prompt_len, params):
        self.sender = sender
        self.prompt_len = prompt_len
        self.pad_id = params.pad_id
        self.log_probs = params.output_log_probs  # asked for
        self.num_sent = 0       # generated tokens sent so far
        self.tail = []          # the last CONTEXT_TOKENS of them
        self.cum_log_prob = 0.0  # of those sent, when log-probabilities are asked for
        self.cancelling = False


class _Beam(NamedTuple):
    """What a response carries of one beam (the one sequence without beam search)."""
    tokens: list          # generated, new in this response
    log_probs: list       # theirs, when asked for
    context: list         # the few sent before them, to detokenize
    cum_log_prob: float   # of all generated so far
    generated: int        # tokens generated so far
    reason: str           # its finish reason, or NOT_FINISHED


def _array(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request, name, default, cast):
    a = _array(request, name)
    if a is None:
        return default
    if a.size != 1:
        raise ValueError(f"{name} must hold one value, got shape {list(a.shape)}")
    return cast(a.reshape(-1)[0])


def _words(request, name):
    """TensorRT-LLM's stop_words_list or bad_words_list [1, 2, L]: concatenated ids, then end
    offsets (-1 pads)."""
    a = _array(request, name)
    if a is None or a.size == 0:
        return []
    if a.ndim != 3 or a.shape[:2] != (1, 2):
        raise ValueError(f"{name} must have shape [1, 2, L], got {list(a.shape)}")
    ids, offsets = a[0, 0].tolist(), a[0, 1].tolist()
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if not start < end <= len(ids):
            raise ValueError(f"{name} offsets {offsets} do not split {len(ids)} ids")
        words.append(ids[start:end])
        start = end
    return words


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        from kiln.runtime import ModelRunner
        from kiln.runtime.grammar import compile_grammar
        from kiln.runtime.json_schema import compile_schema
        from kiln.runtime.regex import compile_regex
        from kiln.runtime.requests import GenerationParams, make_requests

        self.config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.config):
            raise pb_utils.TritonModelException(
                "the Kiln engine model streams its responses; set model_transaction_policy "
                "{ decoupled: true } in its config.pbtxt")
        p = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        if "engine_dir" not in p:
            raise pb_utils.TritonModelException("config.pbtxt has no engine_dir parameter; "
                                                "regenerate the repository with engine-triton-repo")
        def number(key):
            return int(p[key]) if p.get(key) else None

        device = p.get("device", "auto")
        self.runner = ModelRunner.from_dir(
            p["engine_dir"], max_batch_size=number("max_batch_size"),
            max_num_tokens=number("max_num_tokens"),
            kv_cache_free_gpu_memory_fraction=float(p.get("kv_cache_free_gpu_memory_fraction", 0.9)),
            enable_kv_cache_reuse=p.get("enable_kv_cache_reuse", "true").lower() == "true",
            device=None if device == "auto" else device)
        self.make_params, self.make_requests = GenerationParams, make_requests
        # guide type: (make_requests' keyword, its compiler, what guided_decoding_guide holds)
        self.guides = {"json_schema": ("json_schema", compile_schema, "schema"),
                       "regex": ("regex", compile_regex, "pattern"),
                       "ebnf_grammar": ("grammar", compile_grammar, "grammar")}
        eos = self.runner.tokenizer.eos_id
        self.default_end_id = -1 if eos is None else eos
        self.responses = queue.SimpleQueue()
        self.streams = {}               # executor request id -> _Stream
        self.lock = threading.Lock()    # submit + register is atomic for the sender thread
        self.stopping = threading.Event()
        self.sender = threading.Thread(target=self._send_loop, name="kiln-triton-sender", daemon=True)
        self.sender.start()

    # -- requests in ------------------------------------------------------------------------
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                kiln_request, prompt_len, params = self._to_kiln(request)
            except Exception as e:  # any bad input fails its request alone
                sender.send(_error(str(e), pb_utils.TritonError.INVALID_ARG),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            with self.lock:
                rid, _ = self.runner.router.submit(kiln_request, self.responses)
                self.streams[rid] = _Stream(sender, prompt_len, params)
        return None

    def _to_kiln(self, request):
        ids = _array(request, "input_ids")
        if ids is None:
            raise ValueError("input_ids is required")
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"send one sequence per request: input_ids must have shape [1, n], "
                             f"got {list(ids.shape)}")
        prompt = [int(t) for t in ids[0]]
        length = _scalar(request, "input_lengths", len(prompt), int)
        if not 0 <= length <= len(prompt):
            raise ValueError(f"input_lengths is {length} but input_ids has {len(prompt)} tokens")
        prompt = prompt[:length]
        max_new = _scalar(request, "request_output_len", None, int)
        if max_new is None:
            raise ValueError("request_output_len is required")
        end_id = _scalar(request, "end_id", self.default_end_id, int)
        temperature = _scalar(request, "temperature", 0.0, float)
        pad_id = _scalar(request, "pad_id", max(end_id, 0), int)
        beams = _scalar(request, "beam_width", 1, int)
        streaming = _scalar(request, "streaming", False, bool)
        if beams > 1 and streaming:
            raise ValueError("a beam search answers once, with every beam: send streaming "
                             "false with beam_width > 1")
        params = self.make_params(
            max_new_tokens=max_new, end_id=end_id, pad_id=pad_id,
            temperature=temperature, top_k=_scalar(request, "runtime_top_k", 0, int),
            top_p=_scalar(request, "runtime_top_p", 1.0, float),
            min_p=_scalar(request, "runtime_min_p", 0.0, float),
            repetition_penalty=_scalar(request, "repetition_penalty", 1.0, float),
            presence_penalty=_scalar(request, "presence_penalty", 0.0, float),
            frequency_penalty=_scalar(request, "frequency_penalty", 0.0, float),
            random_seed=_scalar(request, "random_seed", None, int),
            min_tokens=_scalar(request, "min_tokens", 0, int),
            logit_bias=self._embedding_bias(request),
            output_log_probs=_scalar(request, "return_log_probs", False, bool),
            num_beams=beams, length_penalty=_scalar(request, "len_penalty", 1.0, float),
            early_stopping=_scalar(request, "early_stopping", True, bool))
        stops = _words(request, "stop_words_list")
        bad = _words(request, "bad_words_list")
        made = self.make_requests([prompt], params, stops or None, streaming, self.runner.tokenizer,
                                  [bad] if bad else None, **self._guided(request))
        return made[0], len(prompt), params

    def _guided(self, request):
        """TensorRT-LLM's guided decoding as make_requests' keywords: guided_decoding_guide_type
        "json" (one JSON object), "json_schema" (one value valid against the schema in
        guided_decoding_guide), "regex" (text matching the pattern there) or "ebnf_grammar" (a
        sentence of the grammar there); none without a guide type."""
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        kind = _scalar(request, "guided_decoding_guide_type", None, text)
        guide = _scalar(request, "guided_decoding_guide", None, text)
        if kind is None:
            if guide is not None:
                raise ValueError("guided_decoding_guide needs guided_decoding_guide_type "
                                 "\"json_schema\", \"regex\" or \"ebnf_grammar\"")
            return {}
        if kind != "json" and kind not in self.guides:
            raise ValueError(f"guided_decoding_guide_type {kind!r} is not supported; use \"json\" "
                             "(one JSON object), \"json_schema\", \"regex\" or \"ebnf_grammar\" "
                             "(with the schema, pattern or grammar in guided_decoding_guide) or "
                             "leave it out")
        out = {"json_table": self.runner.tokenizer.token_table(self.runner.vocab_size)}
        if kind != "json":
            keyword, compile_guide, what = self.guides[kind]
            if guide is None:
                raise ValueError(f"guided_decoding_guide_type \"{kind}\" needs the {what} in "
                                 "guided_decoding_guide")
            out[keyword] = compile_guide(guide)
        return out

    def _embedding_bias(self, request):
        """TensorRT-LLM's embedding_bias ([1, V], added to the logits, V at most the model's
        vocabulary) as the executor's logit bias: {token id: bias} of its nonzero entries."""
        a = _array(request, "embedding_bias")
        if a is None or a.size == 0:
            return None
        bias = a.reshape(-1).astype(np.float64)
        vocab = self.runner.vocab_size
        if bias.size > vocab:
            raise ValueError(f"embedding_bias has {bias.size} entries but the model's vocabulary "
                             f"has {vocab} tokens")
        bad = np.flatnonzero(~(np.abs(bias) <= 100.0))
        if bad.size:
            raise ValueError(f"embedding_bias[{bad[0]}] is {bias[bad[0]]} but each bias must lie "
                             "within [-100, 100]")
        return {int(t): float(bias[t]) for t in np.flatnonzero(bias)}

    # -- responses out ----------------------------------------------------------------------
    def _send_loop(self):
        checked = time.monotonic()
        while not (self.stopping.is_set() and not self.streams):
            try:
                response = self.responses.get(timeout=POLL_S)
            except queue.Empty:
                response = None
            if response is not None:
                with self.lock:
                    stream = self.streams.get(response.request_id)
                if stream is not None:
                    self._send(response.request_id, stream, response)
            # Asking Triton whether a request was cancelled is a round trip to the server
            # process: do it for all requests every POLL_S, not after every response.
            if time.monotonic() - checked >= POLL_S:
                self._cancel_abandoned()
                checked = time.monotonic()

    def _send(self, rid, stream, r):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if r.is_final:
            with self.lock:
                del self.streams[rid]
        if r.has_error:
            bad = r.error_message.startswith("bad request: ")
            code = pb_utils.TritonError.INVALID_ARG if bad else pb_utils.TritonError.INTERNAL
            stream.sender.send(_error(r.error_message.removeprefix("bad request: "), code), flags=final)
            return
        reason = r.finish_reason.name.lower()
        if reason == "cancelled":
            stream.sender.send(_error("the request was cancelled", pb_utils.TritonError.CANCELLED),
                               flags=final)
            return
        if r.beams:  # a beam search's one answer: every beam, best first
            beams = [_Beam(list(b.tokens), list(b.log_probs), [], b.cum_log_prob, len(b.tokens),
                           b.finish_reason.name.lower()) for b in r.beams]
        else:
            new, log_probs = list(r.output_token_ids), list(r.log_probs)
            context = stream.tail
            stream.tail = (context + new)[-CONTEXT_TOKENS:]
            stream.num_sent += len(new)
            stream.cum_log_prob += sum(log_probs)
            beams = [_Beam(new, log_probs, context, stream.cum_log_prob, stream.num_sent,
                           reason if r.is_final else NOT_FINISHED)]
        width = max(len(b.tokens) for b in beams)

        def rows(values, dtype):  # [1, beams, n]
            return np.array([values], dtype=dtype).reshape(1, len(beams), -1)

        ids = [b.tokens + [stream.pad_id] * (width - len(b.tokens)) for b in beams]
        log_probs = ([b.log_probs + [0.0] * (width - len(b.log_probs)) for b in beams]
                     if stream.log_probs else [[] for _ in beams])
        def each(values, dtype):  # [1, beams]
            return np.array([values], dtype=dtype)

        outputs = [
            pb_utils.Tensor("output_ids", rows(ids, np.int32)),
            pb_utils.Tensor("output_lengths", each([len(b.tokens) for b in beams], np.int32)),
            pb_utils.Tensor("context_ids", rows([b.context for b in beams], np.int32)),
            pb_utils.Tensor("sequence_length",
                            each([stream.prompt_len + b.generated for b in beams], np.int32)),
            pb_utils.Tensor("output_log_probs", rows(log_probs, np.float32)),
            pb_utils.Tensor("cum_log_probs", each([b.cum_log_prob for b in beams], np.float32)),
            pb_utils.Tensor("finish_reason", each([b.reason for b in beams], np.object_)),
        ]
        stream.sender.send(pb_utils.InferenceResponse(output_tensors=outputs),
                           flags=final if r.is_final else 0)

    def _cancel_abandoned(self):
        with self.lock:
            streams = list(self.streams.items())
        for rid, stream in streams:
            if not stream.cancelling and stream.sender.is_cancelled():
                stream.cancelling = True
                self.runner.router.cancel(rid)

    def finalize(self):
        with self.lock:
            pending = list(self.streams)
        for rid in pending:  # each gets its final "cancelled" response
            self.runner.router.cancel(rid)
        self.stopping.set()
        self.sender.join(timeout=10)
        self.runner.shutdown()
        with self.lock:
            left, self.streams = list(self.streams.values()), {}
        for stream in left:  # every request ends with a final flag, even if its answer was lost
            stream.sender.send(_error("the model was unloaded", pb_utils.TritonError.UNAVAILABLE),
                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
