"""ModelRunner: TensorRT-LLM's ModelRunnerCpp shape over Kiln's C++ executor."""
from __future__ import annotations

import os
import queue
from typing import Iterator, Sequence

import torch

from kiln import _core
from kiln.builder.engine import Engine, load_engine
from kiln.builder.errors import KilnError
from kiln.runtime.grammar import compile_grammar
from kiln.runtime.json_schema import compiled
from kiln.runtime.regex import compile_regex
from kiln.runtime.router import ResponseRouter
from kiln.runtime.requests import GenerationParams, make_requests, normalize_inputs

CAPACITY_POLICIES = ("max_utilization", "guaranteed_no_evict")
from kiln.runtime.tokenizer import EngineTokenizer


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def pick_device(device: str | None, engine: Engine | None = None) -> str:
    """Returns "cpu" or "cuda": the one asked for (checked), or the GPU when there is one and
    the engine (if given) carries kernels."""
    if device not in (None, "cpu", "cuda"):
        raise KilnError(f"device {device!r} is not supported; use 'cpu', 'cuda' or None (auto)")
    has_gpu = hasattr(_core, "PlanExecutor") and torch.cuda.is_available()
    if device is None and engine is not None and not engine.kernels:
        return "cpu"  # built without Triton: only the reference backend can run it
    if device == "cuda" and not has_gpu:
        raise KilnError("device='cuda' asked for, but no CUDA GPU (or no GPU support in "
                        "kiln._core) is available; use device='cpu'")
    return device or ("cuda" if has_gpu else "cpu")


def fp8_fast_accumulation_on_gpu(asked: bool | None) -> bool:
    """Whether the GPU backend's FP8 GEMMs accumulate without promoting partial sums to float32:
    `asked`, or by default (None) yes, as inference stacks run them (measured on an H100: +4-5%
    on compute-bound steps, an error 13-25 times under the e4m3 operands' own)."""
    return True if asked is None else asked


def runs_fp8_fast(engine: Engine, gpu_backend) -> bool:
    """Whether the engine's FP8 GEMMs run with fast accumulation on `gpu_backend` (None: not
    on the GPU; False for an engine without FP8 GEMMs)."""
    return bool(gpu_backend is not None and engine.config.build.quant == "fp8"
                and gpu_backend.fp8_fast_accumulation)


class ModelRunner:
    """Loads an engine and generates with inflight batching; one executor per runner."""

    def __init__(self, engine: Engine, executor, backend, device: str) -> None:
        self.engine = engine
        self.executor = executor
        self.backend = backend
        self.device = device
        self.tokenizer = EngineTokenizer(engine)
        self.router = ResponseRouter(executor)

    @classmethod
    def from_dir(cls, engine_dir, *, max_batch_size: int | None = None,
                 max_num_tokens: int | None = None, kv_cache_free_gpu_memory_fraction: float = 0.9,
                 enable_kv_cache_reuse: bool = True, max_tokens_in_paged_kv_cache: int | None = None,
                 device: str | None = None, cuda_graphs: bool = True,
                 capacity_scheduler_policy: str = "max_utilization",
                 fp8_fast_accumulation: bool | None = None,
                 kernels_from_rows: int | None = None) -> "ModelRunner":
        """Loads an engine. The KV pool takes kv_cache_free_gpu_memory_fraction of free memory
        (on the CPU: of a quarter of available RAM), capped at max_tokens_in_paged_kv_cache.
        On the GPU, decode-only steps run as CUDA graphs unless cuda_graphs is False, and FP8
        GEMMs accumulate without promoting partial sums to float32 unless fp8_fast_accumulation
        is False (None: fast on the GPU; True is refused on the CPU). kernels_from_rows: from this
        many rows a GEMM runs Kiln's own kernel where the engine has one that takes them, rather
        than cuBLASLt; 0: the executor times the two against each other at every M and keeps the
        faster; None (the default): Kiln's kernel where the engine prefers it (from the rows its
        plan gives), timed against cuBLASLt elsewhere.
        capacity_scheduler_policy: "max_utilization" (admit while prompts fit, preempt the newest
        when out of blocks) or "guaranteed_no_evict" (admit only what can run to its full length)."""
        if capacity_scheduler_policy not in CAPACITY_POLICIES:
            raise KilnError(f"capacity_scheduler_policy must be one of {', '.join(CAPACITY_POLICIES)}, "
                            f"got {capacity_scheduler_policy!r}")
        engine = load_engine(engine_dir)
        build = engine.config.build
        max_batch_size = build.limit("max_batch_size", max_batch_size)
        max_num_tokens = build.limit("max_num_tokens", max_num_tokens)
        if not 0.0 < kv_cache_free_gpu_memory_fraction <= 1.0:
            raise KilnError(f"kv_cache_free_gpu_memory_fraction must be in (0, 1], got "
                            f"{kv_cache_free_gpu_memory_fraction}")
        device = pick_device(device, engine)
        if fp8_fast_accumulation and device != "cuda":
            raise KilnError(f"fp8_fast_accumulation applies to the GPU backend's FP8 GEMMs; this "
                            f"runner is on {device}")
        if kernels_from_rows is not None and kernels_from_rows < 0:
            raise KilnError(f"kernels_from_rows must be None (the engine's preferences), 0 (every "
                            f"choice timed) or a number of rows, got {kernels_from_rows}")
        if kernels_from_rows is not None and device != "cuda":
            raise KilnError(f"kernels_from_rows applies to the GPU backend's GEMMs; this runner is "
                            f"on {device}")
        max_blocks = None
        if max_tokens_in_paged_kv_cache is not None:
            if max_tokens_in_paged_kv_cache < build.tokens_per_block:
                raise KilnError(f"max_tokens_in_paged_kv_cache={max_tokens_in_paged_kv_cache} is "
                                f"less than one block ({build.tokens_per_block} tokens)")
            max_blocks = max_tokens_in_paged_kv_cache // build.tokens_per_block
        if device == "cuda":
            backend = _core.PlanExecutor(engine, kv_cache_free_gpu_memory_fraction, max_blocks,
                                         cuda_graphs=cuda_graphs)
            backend.fp8_fast_accumulation = fp8_fast_accumulation_on_gpu(fp8_fast_accumulation)
            backend.kernels_from_rows = kernels_from_rows
            # The GEMM choices a step would otherwise make, and the kernels it would load, now.
            backend.prepare_gemms_ahead(max_batch_size, max_num_tokens)
            # Decode steps' graphs and GEMM choices now, not in the steps that first need them.
            backend.capture_graphs(max_batch_size)
        else:
            from kiln.runtime.reference import ReferenceBackend
            need = max_batch_size * build.max_blocks_per_seq + 1
            budget = int(kv_cache_free_gpu_memory_fraction * _available_ram() * 0.25)
            num_blocks = min(need, max(budget // cls._kv_block_bytes(engine), build.max_blocks_per_seq))
            backend = ReferenceBackend(engine, min(num_blocks, max_blocks or num_blocks))
        config = _core.ExecutorConfig(
            vocab_size=engine.config.model.vocab_size, max_batch_size=max_batch_size,
            max_num_tokens=max_num_tokens, max_seq_len=build.max_seq_len,
            tokens_per_block=build.tokens_per_block, enable_kv_cache_reuse=enable_kv_cache_reuse,
            capacity_scheduler_policy=capacity_scheduler_policy)
        return cls(engine, _core.Executor(config, backend), backend, device)

    @staticmethod
    def _kv_block_bytes(engine: Engine) -> int:
        m, b = engine.config.model, engine.config.build
        elem = torch.empty((), dtype=getattr(torch, b.dtype)).element_size()
        return m.num_layers * 2 * m.num_kv_heads * b.tokens_per_block * m.head_dim * elem

    # -- properties users of ModelRunnerCpp reach for -------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.engine.config.model.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.engine.config.build.max_seq_len

    @property
    def fp8_fast_accumulation(self) -> bool:
        """Whether the engine's FP8 GEMMs run with fast accumulation (False without any)."""
        return runs_fp8_fast(self.engine, self.backend if self.device == "cuda" else None)

    def kv_cache_stats(self) -> dict:
        return self.executor.get_kv_cache_stats()

    def iteration_stats(self) -> dict | None:
        return self.executor.get_latest_iteration_stats()

    # -- generation ------------------------------------------------------------------------
    def generate(self, batch_input_ids: Sequence, *, max_new_tokens: int, end_id: int | None = None,
                 pad_id: int | None = None, temperature: float = 1.0, top_k: int = 1,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 random_seed: int | None = None, stop_words_list=None, streaming: bool = False,
                 return_dict: bool = False, output_log_probs: bool = False, min_tokens: int = 0,
                 logit_bias: dict | None = None, allowed_token_ids: Sequence[int] | None = None,
                 top_log_probs: int = 0, bad_words_list=None, json_object: bool = False,
                 json_schema=None, regex=None, grammar=None, prompt_log_probs: int | None = None,
                 num_beams: int = 1, length_penalty: float = 1.0,
                 early_stopping: int | bool | str = 1):
        """Generates for a batch of prompts (1-D int tensors, lists of ids, or strings).

        Defaults are greedy (top_k=1), as in TensorRT-LLM. Returns output_ids
        [batch, 1, max_len] (prompt + generated, padded with pad_id) or, with return_dict, a
        dict with output_ids, sequence_lengths, log_probs, finish_reasons (and texts when the
        prompts were strings). Strings in give texts out. streaming=True yields partial results.
        min_tokens: until each request has generated this many tokens, end_id and one-token stop
        words are never picked and no stop word ends it. logit_bias: {token id: bias in
        [-100, 100]} added to the model's logits before the penalties (OpenAI's).
        allowed_token_ids: the only tokens that may be picked (vLLM's). top_log_probs: with
        output_log_probs and return_dict, "top_log_probs" holds per request, per generated token,
        the this-many most likely (token, log-probability) pairs (at most 20). bad_words_list:
        sequences never generated, given as stop_words_list is (TensorRT-LLM's). json_object:
        each output is one JSON object (OpenAI's response_format json_object; each token is
        picked among those that continue one, and a request stops, with finish reason
        "stop_words", once its object is complete; the tokenizer gives the tokens' bytes).
        json_schema: a JSON schema (a dict, its JSON text, or compiled by
        kiln.runtime.json_schema.compile_schema): each output is one JSON value valid against
        it, picked and stopped as for json_object (the schema's top-level value an object or an
        array; what the schema language can say and kiln does not enforce is refused).
        regex: a pattern (or compiled by kiln.runtime.regex.compile_regex) the whole output
        matches, as re.fullmatch reads it: each token is picked among those that keep a match
        reachable, end_id only where the text matches, and a request stops ("stop_words") once
        nothing may follow.
        grammar: EBNF text (GBNF, as xgrammar and llama.cpp read it; or compiled by
        kiln.runtime.grammar.compile_grammar) whose `root` rule the whole output is a sentence
        of, picked and stopped as for regex.
        prompt_log_probs: with return_dict, "prompt_log_probs" holds per request the
        log-probability of each prompt token after the first given those before it (the model's
        raw distribution, as vLLM's prompt_logprobs), and with a value k > 0
        "prompt_top_log_probs" the k most likely (token, log-probability) pairs at each of those
        positions (at most 20). Such a prompt is computed one token a step, never taken from
        the prefix cache.
        num_beams > 1 (at most 10): beam search, as HuggingFace's generate(num_beams=...,
        do_sample=False) and TensorRT-LLM's beam_width: output_ids is [batch, num_beams, max_len]
        with each prompt's beams best first, sequence_lengths [batch, num_beams], and with
        return_dict "cum_log_probs" [batch][num_beams] and "log_probs" per beam. Hypotheses are
        ranked by cum_log_prob / length ** length_penalty; early_stopping: 1 (True) ends a search
        once num_beams hypotheses are finished, 0 (False) once no running beam can beat them, 2
        ("never") at the length limit. Greedy only (no penalties, logit bias or allowed tokens),
        no streaming.
        """
        prompts, as_text = normalize_inputs(batch_input_ids, self.tokenizer)
        if end_id is None:
            end_id = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else -1
        if pad_id is None:
            pad_id = end_id if end_id >= 0 else 0
        params = GenerationParams(max_new_tokens, end_id, pad_id, temperature, top_k, top_p, min_p,
                                  repetition_penalty, presence_penalty, frequency_penalty,
                                  random_seed, output_log_probs, min_tokens, logit_bias,
                                  allowed_token_ids, top_log_probs, prompt_log_probs, num_beams,
                                  length_penalty, early_stopping)
        guides = [name for name, given in (("grammar", grammar is not None),
                                           ("regex", regex is not None),
                                           ("json_object", json_object),
                                           ("json_schema", json_schema is not None)) if given]
        if len(guides) > 1:
            raise KilnError(f"{guides[0]} and {guides[1]} do not combine; ask for one of them")
        schema = None if json_schema is None else compiled(json_schema)
        pattern = None if regex is None else (
            regex if isinstance(regex, _core.RegexDfa) else compile_regex(regex))
        rules = None if grammar is None else (
            grammar if isinstance(grammar, _core.Grammar) else compile_grammar(grammar))
        requests = make_requests(prompts, params, stop_words_list, streaming, self.tokenizer,
                                 bad_words_list, json_table=self.tokenizer.token_table(
                                     self.vocab_size) if guides else None,
                                 json_schema=schema, regex=pattern, grammar=rules)
        stream = self._run(prompts, requests, params, as_text, return_dict)
        if streaming:
            return stream
        result = None
        for result in stream:
            pass
        return result

    def _run(self, prompts, requests, params, as_text, return_dict) -> Iterator:
        responses: queue.SimpleQueue = queue.SimpleQueue()
        index = {rid: i for i, rid in enumerate(self.router.submit_many(requests, responses)[0])}
        generated: list[list[int]] = [[] for _ in requests]
        log_probs: list[list[float]] = [[] for _ in requests]
        tops: list[list] = [[] for _ in requests]
        prompt_scores: list[tuple[list, list]] = [([], []) for _ in requests]
        beams: list[list] = [[] for _ in requests]
        reasons = ["not_finished"] * len(requests)
        errors: dict[int, str] = {}
        pending = set(index)
        try:
            while pending:
                batch = [responses.get()]
                while not responses.empty():
                    batch.append(responses.get())
                for r in batch:
                    i = index[r.request_id]
                    generated[i] += r.output_token_ids
                    log_probs[i] += r.log_probs
                    tops[i] += r.top_log_probs
                    if r.prompt_log_probs:
                        prompt_scores[i] = (list(r.prompt_log_probs), r.prompt_top_log_probs)
                    if r.beams:
                        beams[i] = list(r.beams)
                    if r.is_final:
                        pending.discard(r.request_id)
                        reasons[i] = r.finish_reason.name.lower()
                        if r.has_error:
                            errors[i] = r.error_message
                if pending and requests[0].streaming:
                    yield self._result(prompts, generated, log_probs, tops, prompt_scores, beams,
                                       reasons, params, as_text, return_dict)
        finally:
            for rid in pending:  # an abandoned stream must not keep its requests running
                self.router.cancel(rid)
        if errors:
            first = min(errors)
            raise KilnError(f"request {first} of the batch failed: {errors[first]}")
        yield self._result(prompts, generated, log_probs, tops, prompt_scores, beams, reasons,
                           params, as_text, return_dict)

    def _result(self, prompts, generated, log_probs, tops, prompt_scores, beams, reasons, params,
                as_text, return_dict):
        # Per prompt, its sequences: the one generated, or its beams best first.
        outputs = [[list(b.tokens) for b in found] if params.num_beams > 1 and found else [g]
                   for g, found in zip(generated, beams)]
        full = [[list(p) + o for o in outs] for p, outs in zip(prompts, outputs)]
        width = max(len(f) for seqs in full for f in seqs)
        out = torch.full((len(full), params.num_beams, width), params.pad_id, dtype=torch.int32)
        lengths = torch.zeros((len(full), params.num_beams), dtype=torch.int32)
        for i, seqs in enumerate(full):
            for b, seq in enumerate(seqs):
                out[i, b, : len(seq)] = torch.tensor(seq, dtype=torch.int32)
                lengths[i, b] = len(seq)
        texts = [self.tokenizer.decode(g) for g in generated] if as_text else None
        if not return_dict:
            return texts if as_text else out
        if params.num_beams > 1:
            log_probs = [[list(b.log_probs) for b in found] for found in beams]
        return {"output_ids": out, "sequence_lengths": lengths,
                "log_probs": log_probs if params.output_log_probs else None,
                "cum_log_probs": ([[b.cum_log_prob for b in found] for found in beams]
                                  if params.num_beams > 1 else None),
                "top_log_probs": tops if params.top_log_probs else None,
                "prompt_log_probs": ([lps for lps, _ in prompt_scores]
                                     if params.prompt_log_probs is not None else None),
                "prompt_top_log_probs": ([top for _, top in prompt_scores]
                                         if params.prompt_log_probs else None),
                "finish_reasons": list(reasons), "texts": texts}

    def shutdown(self) -> None:
        self.executor.shutdown()
        self.router.close()

    def __enter__(self) -> "ModelRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
