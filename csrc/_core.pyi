"""Kiln runtime core: KV cache manager, scheduler, sampler and executor (C++, pybind11)."""

import enum
from collections.abc import Sequence as _Seq
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

def version() -> str: ...

MAX_TOP_LOG_PROBS: int
"""the most alternatives a request may ask for at each token"""
MAX_BEAM_WIDTH: int
"""the most beams a beam search may ask for"""
MAX_GUIDED_CHOICES: int
MAX_JSON_DEPTH: int
"""the most choices a request may give (Request.choices)"""

class SamplingConfig:
    """How one request picks its tokens; temperature 0 = greedy (lowest id on ties)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    min_tokens: int
    """until this many are generated, end_id and one-token stop words are never picked and no
    stop word ends the request; 0 = off"""
    logit_bias: dict[int, float]
    """added to these tokens' logits before the penalties (OpenAI's logit_bias, each in [-100, 100])"""
    allowed_token_ids: list[int]
    """when not empty, the only tokens that may be picked (vLLM's allowed_token_ids)"""
    beam_width: int
    """beams of a beam search (1 = none, at most MAX_BEAM_WIDTH); needs plain greedy otherwise"""
    length_penalty: float
    """a finished beam scores cum_log_prob / length ** length_penalty"""
    early_stopping: int
    """1: a beam search ends once beam_width hypotheses are finished; 0: once none running can
    beat them; 2: never before the length limit"""
    def __init__(
        self,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        min_tokens: int = 0,
        logit_bias: dict[int, float] = ...,
        allowed_token_ids: list[int] = ...,
        beam_width: int = 1,
        length_penalty: float = 1.0,
        early_stopping: int = 1,
    ) -> None: ...
    def validate(self) -> str | None:
        """The problem with these values (one line), or None."""

class ExecutorConfig:
    """Limits and cache shape; the number of KV blocks comes from the backend."""

    max_batch_size: int
    max_num_tokens: int
    max_seq_len: int
    tokens_per_block: int
    vocab_size: int
    enable_kv_cache_reuse: bool
    capacity_scheduler_policy: str
    """"max_utilization" (preempt the newest when out of blocks) or "guaranteed_no_evict"
    (admit only requests that can run to their full length)."""
    def __init__(
        self,
        *,
        vocab_size: int,
        max_batch_size: int = 8,
        max_num_tokens: int = 512,
        max_seq_len: int = 2048,
        tokens_per_block: int = 16,
        enable_kv_cache_reuse: bool = True,
        capacity_scheduler_policy: str = "max_utilization",
    ) -> None: ...
    @property
    def max_blocks_per_seq(self) -> int: ...
    def validate(self) -> str | None: ...

class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    CANCELLED = 4
    ERROR = 5

class Request:
    """One generation request. The end id and a matched stop word stay in the output."""

    input_token_ids: list[int]
    max_new_tokens: int
    sampling_config: SamplingConfig
    end_id: int
    pad_id: int
    stop_words: list[list[int]]
    streaming: bool
    return_log_probs: bool
    priority: int
    num_top_log_probs: int
    """with return_log_probs: this many most likely tokens at each generated one (at most 20)"""
    bad_words: list[list[int]]
    """sequences never generated (a word's last token is not picked after the rest of it)"""
    choices: list[list[int]]
    """when not empty, the output is one of these sequences (stops once it is one)"""
    json_object: bool
    """the output is one JSON object (stops, STOP_WORDS, once it is complete); needs token_table"""
    token_table: TokenTable | None
    json_schema: JsonSchema | None
    """the output is one JSON value valid against this schema; needs token_table"""
    regex: RegexDfa | None
    """the whole output matches this pattern's automaton; needs token_table"""
    grammar: Grammar | None
    """the whole output is a sentence of this grammar; needs token_table"""
    prompt_log_probs: int | None
    """k: each prompt token's log-probability after the first, with the k most likely tokens
    there (the prompt is then computed one token a step, never from the prefix cache)"""
    def __init__(
        self,
        input_token_ids: _Seq[int],
        *,
        max_new_tokens: int = 16,
        sampling_config: SamplingConfig = ...,
        end_id: int = -1,
        pad_id: int = -1,
        stop_words: _Seq[_Seq[int]] = ...,
        streaming: bool = False,
        return_log_probs: bool = False,
        priority: int = 0,
        num_top_log_probs: int = 0,
        bad_words: _Seq[_Seq[int]] = ...,
        choices: _Seq[_Seq[int]] = ...,
        json_object: bool = False,
        token_table: TokenTable | None = None,
        json_schema: JsonSchema | None = None,
        prompt_log_probs: int | None = None,
        regex: RegexDfa | None = None,
        grammar: Grammar | None = None,
    ) -> None: ...

class RegexDfa:
    """A pattern's automaton over UTF-8 bytes (kiln.runtime.regex.compile_regex makes one)."""

    def __init__(self, next: _Seq[int], accepting: _Seq[bool]) -> None: ...
    @property
    def num_states(self) -> int: ...
    def walk(self, state: int, bytes: bytes) -> int:
        """The state after the bytes, or -1 (no match can follow)."""
    def accepting(self, state: int) -> bool: ...
    def closed(self, state: int) -> bool: ...
    def tokens(self, state: int, table: TokenTable, vocab_size: int) -> list[int]:
        """The tokens whose bytes keep a match reachable from the state."""

class Grammar:
    """A context-free grammar over UTF-8 bytes (kiln.runtime.grammar.compile_grammar makes one);
    a state is the list of parse stacks that fit the text read so far."""

    MAX_STACKS: int
    def __init__(self, rules: _Seq[_Seq[_Seq[int]]], byte_sets: _Seq[bytes]) -> None: ...
    @property
    def num_rules(self) -> int: ...
    def start(self) -> list[list[int]]:
        """The state before any text."""
    def advance(self, state: _Seq[_Seq[int]], bytes: bytes) -> list[list[int]]:
        """The state after the bytes ([]: no sentence can follow)."""
    @staticmethod
    def accepting(state: _Seq[_Seq[int]]) -> bool: ...
    @staticmethod
    def closed(state: _Seq[_Seq[int]]) -> bool: ...
    @staticmethod
    def left_recursive(rules: _Seq[_Seq[_Seq[int]]]) -> int:
        """A rule that can begin with itself, found depth first from rule 0; -1 if none."""
    def tokens(self, state: _Seq[_Seq[int]], table: TokenTable, vocab_size: int) -> list[int]:
        """The tokens whose bytes keep a sentence reachable from the state."""

class JsonSchema:
    """A compiled JSON schema (kiln.runtime.json_schema.compile_schema makes one)."""

    def __init__(self, nodes: _Seq[object]) -> None: ...
    def __len__(self) -> int: ...

class JsonObjectPrefix:
    """Whether a text read byte by byte can still grow into one JSON object, and whether it is one."""

    def __init__(self) -> None: ...
    def feed(self, bytes: bytes) -> bool:
        """Reads the bytes; False as soon as one cannot continue a JSON object (the state is then spent)."""
    @property
    def complete(self) -> bool: ...
    def copy(self) -> JsonObjectPrefix: ...

class TokenTable:
    """The bytes of each token id of a vocabulary (b'' for one never picked inside JSON)."""

    def __init__(self, bytes: _Seq[bytes]) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, token: int) -> bytes: ...

class Beam:
    """One hypothesis of a beam search."""

    @property
    def tokens(self) -> list[int]: ...
    @property
    def log_probs(self) -> list[float]: ...
    @property
    def cum_log_prob(self) -> float: ...
    @property
    def score(self) -> float:
        """cum_log_prob / len(tokens) ** length_penalty: the ranking."""
    @property
    def finished(self) -> bool: ...
    @property
    def finish_reason(self) -> FinishReason:
        """How it ends: END_ID, STOP_WORDS or LENGTH."""

class Response:
    """New tokens of a request: per step when streaming, else all in the final response."""

    @property
    def request_id(self) -> int: ...
    @property
    def output_token_ids(self) -> list[int]: ...
    @property
    def log_probs(self) -> list[float]: ...
    @property
    def top_log_probs(self) -> list[list[tuple[int, float]]]:
        """Per output token, when asked for: the most likely (token, log-probability) pairs."""
    @property
    def beams(self) -> list[Beam]:
        """With beam search, in the final response of a search that ended: its beams, best first."""
    @property
    def prompt_log_probs(self) -> list[float]:
        """In the first response, when asked for: each prompt token's log-probability after the first."""
    @property
    def prompt_ranks(self) -> list[int]:
        """Beside prompt_log_probs: each of those tokens' rank there (1 + the tokens more likely)."""
    @property
    def prompt_top_log_probs(self) -> list[list[tuple[int, float]]]:
        """Beside prompt_log_probs, with k > 0: the k most likely (token, log-probability) pairs."""
    @property
    def is_final(self) -> bool: ...
    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def error_message(self) -> str: ...
    @property
    def has_error(self) -> bool: ...

class KvCacheManager:
    """Paged KV block tables with prefix reuse (block metadata only, no memory)."""

    def __init__(self, num_blocks: int, tokens_per_block: int, enable_reuse: bool = True) -> None: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def tokens_per_block(self) -> int: ...
    @property
    def num_free_blocks(self) -> int: ...
    def num_reusable_tokens(self, tokens: _Seq[int]) -> int: ...
    def can_add_sequence(self, tokens: _Seq[int], num_tokens: int) -> bool: ...
    def add_sequence(self, request_id: int, tokens: _Seq[int], num_tokens: int) -> int: ...
    def can_allocate(self, request_id: int, num_tokens: int) -> bool: ...
    def token_capacity(self, request_id: int) -> int: ...
    def allocate(self, request_id: int, num_tokens: int) -> None: ...
    def cache_computed_blocks(self, request_id: int, tokens: _Seq[int], num_computed_tokens: int) -> None: ...
    def remove_sequence(self, request_id: int) -> None: ...
    def has_sequence(self, request_id: int) -> bool: ...
    def block_ids(self, request_id: int) -> list[int]: ...
    def free_block_ids(self) -> list[int]:
        """Free blocks in eviction order (least recently used first)."""
    def reset_prefix_cache(self) -> None: ...
    def stats(self) -> dict[str, int | float]:
        """total_blocks, used_blocks, free_blocks, cached_blocks, looked_up_tokens, reused_tokens, hit_rate."""

class Sequence:
    @property
    def id(self) -> int: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def num_computed_tokens(self) -> int: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def num_preemptions(self) -> int: ...

class ScheduledSequence:
    @property
    def id(self) -> int: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def start_position(self) -> int: ...
    @property
    def is_decode(self) -> bool: ...
    @property
    def samples_next_token(self) -> bool: ...

class SchedulerOutput:
    @property
    def sequences(self) -> list[ScheduledSequence]: ...
    @property
    def preempted(self) -> list[int]: ...
    @property
    def num_prefill_tokens(self) -> int: ...
    @property
    def num_decode_tokens(self) -> int: ...
    def empty(self) -> bool: ...

class Scheduler:
    """Token-budget iteration-level batching over a KvCacheManager (kept alive by the scheduler)."""

    def __init__(
        self, kv_cache: KvCacheManager, *, max_batch_size: int, max_num_tokens: int, max_seq_len: int
    ) -> None: ...
    def check_fits(self, num_prompt_tokens: int, max_new_tokens: int) -> str | None: ...
    def add_request(
        self, request_id: int, prompt: _Seq[int], max_new_tokens: int, priority: int = 0,
        stepwise_prompt: bool = False,
    ) -> str | None:
        """Queues a request; returns why it can never run instead (and queues nothing).
        stepwise_prompt: its prompt is computed one token a step (its logits all read)."""
    def schedule(self) -> SchedulerOutput: ...
    def update_computed(self, output: SchedulerOutput) -> None: ...
    def append_token(self, request_id: int, token: int) -> None: ...
    def remove_request(self, request_id: int) -> bool: ...
    def sequence(self, request_id: int) -> Sequence | None: ...
    def waiting_ids(self) -> list[int]: ...
    def running_ids(self) -> list[int]: ...
    def has_unfinished(self) -> bool: ...
    @property
    def num_preemptions(self) -> int: ...

def apply_penalties(
    logits: _Seq[float], config: SamplingConfig, tokens: _Seq[int], num_prompt_tokens: int
) -> list[float]:
    """HF repetition penalty over all tokens, OpenAI presence/frequency over generated ones."""

def apply_temperature_and_filters(logits: _Seq[float], config: SamplingConfig) -> list[float]:
    """Temperature, then top-k, top-p, min-p; masked entries become -inf."""

class Sampler:
    """The executor's CPU sampler with one request's generator."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None: ...
    def sample(
        self,
        logits: _Seq[float],
        config: SamplingConfig,
        tokens: _Seq[int] = ...,
        num_prompt_tokens: int | None = None,
    ) -> tuple[int, float]: ...

class _StepBackend(Protocol):
    """What the executor needs from a backend written in Python (for typing only)."""

    num_blocks: int
    def forward(self, step: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]: ...

class Backend:
    """Base of the backends written in C++ (the GPU plan executor)."""

    @property
    def num_blocks(self) -> int: ...

class Executor:
    """Inflight-batching executor over a backend, running on its own thread."""

    def __init__(self, config: ExecutorConfig, backend: Backend | _StepBackend) -> None: ...
    def enqueue_request(self, request: Request) -> int: ...
    def enqueue_requests(self, requests: _Seq[Request]) -> list[int]: ...
    def await_responses(
        self, request_id: int | None = None, *, timeout_ms: float | None = None
    ) -> list[Response]:
        """Ready responses (of one request when request_id is given), waiting up to timeout_ms
        (forever when None) for one; [] at once when nothing is in flight."""
    def cancel_request(self, request_id: int) -> None: ...
    def shutdown(self) -> None: ...
    def pause(self) -> None:
        """Holds the loop between two steps (returns once no step runs); requests keep
        queueing. Pauses nest; each needs its resume(). Returns at once after shutdown."""
    def resume(self) -> None:
        """Ends one pause(); RuntimeError without one."""
    def get_latest_iteration_stats(self) -> dict[str, int | float] | None:
        """The last published step's counts and running totals (a step's are published while
        the next one runs, or when none follows); step_us / forward_us time the step and its
        backend calls, the total_* fields sum every step so far."""
    def get_kv_cache_stats(self) -> dict[str, int | float]: ...
    @property
    def config(self) -> ExecutorConfig: ...
    def __enter__(self) -> Executor: ...
    def __exit__(self, *args: object) -> None: ...

class PlanExecutor(Backend):
    """The GPU backend: runs an engine's compiled plan on one GPU (present when kiln._core was
    built with CUDA; it imports and constructs only where a driver and a GPU exist)."""

    def __init__(
        self,
        engine: Any,
        kv_cache_free_gpu_memory_fraction: float = 0.9,
        num_blocks: int | None = None,
        device: int = 0,
        cuda_graphs: bool = True,
        programmatic_launch: bool = True,
    ) -> None: ...
    def forward(self, step: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        """Runs one step (the ABI arrays as numpy); returns float32 logits [B, vocab]."""
    def run_step(self, step: dict[str, npt.NDArray[Any]], logit_rows: list[int]) -> dict[str, npt.NDArray[Any]]:
        """Runs one step as the executor does: {"tokens", "logprobs"} of the greedy pick per row
        (empty when the engine has none) and "logits" [len(logit_rows), vocab]."""
    cuda_graphs: bool
    """Whether decode-only steps run as CUDA graphs (captured per launch shape on first use, or
    by capture_graphs)."""
    programmatic_launch: bool
    """Whether kernels compiled for it (SM 90 and newer) launch with programmatic stream
    serialization, each starting while the one before finishes; setting it drops the captured
    graphs."""
    fp8_fast_accumulation: bool
    """Whether FP8 GEMMs run through cuBLASLt accumulate as the tensor cores do, without
    promoting their partial sums to float32 along K (off by default); setting it drops the
    captured graphs and the GEMM choices."""
    kernels_from_rows: int | None
    """None (the default): a GEMM runs a kernel of Kiln's own (an alternative in the plan)
    untimed against cuBLASLt where the engine prefers it (from the rows its plan gives,
    `preferred_from_m`), and the faster of the two, timed, elsewhere; 0: timed at every M; N:
    from N rows a GEMM with a kernel of Kiln's own that takes them runs it, the fastest of them
    if several. Setting it drops the captured graphs and the GEMM choices; a negative value
    raises KilnError."""
    def prepare_gemms_ahead(self, max_batch_size: int, max_num_tokens: int) -> int:
        """Makes the cuBLASLt choices (its heuristic's pick) of the GEMMs of more rows than
        Kiln's own alternatives take, at every decode batch bucket up to max_batch_size and
        every 256 of a step's tokens up to max_num_tokens, running each once so its kernel is
        loaded (ModelRunner does at load, so a step meeting a new M waits for neither);
        returns how many."""
    def capture_graphs(self, max_batch_size: int) -> int:
        """Captures the CUDA graphs, with their GEMM choices, of greedy decode steps of every
        batch bucket up to max_batch_size whose launch shape is the same at any context length
        (ModelRunner does at load, so a step meeting a new batch bucket does not wait for
        either); returns how many. Shapes that depend on the context, and those of steps that
        return logits, are captured when first met."""
    def graph_stats(self) -> dict[str, float]:
        """{"captured", "replays", "eager_steps"} so far, and "capture_s": the host's seconds
        capturing and instantiating them."""
    def host_times(self) -> dict[str, dict[str, float]]:
        """The host time of its steps so far by part, for steps run launch by launch ("eager") and as
        CUDA graphs ("graph"): each {"steps", and microseconds: "prepare_us" (the step checked,
        its symbols, a graph's padding), "upload_us" (inputs staged, copies enqueued),
        "choose_us" (GEMM choices for rows new to the executor), "launch_us" (launches
        enqueued, or a graph replayed or captured), "beside_us" (the executor's own work
        while the step's first launches ran), "wait_us" (the stream synchronised: the GPU's
        work), "finish_us" (outputs copied out)}."""
    def memory(self) -> dict[str, int]:
        """Bytes of weights, activations, workspace and KV cache, free memory before the KV
        cache was sized, and the total."""
    def gemm_choices(self) -> list[dict[str, Any]]:
        """The cuBLASLt algorithm chosen per (m, n, k, dtype, bias); then, with dtype "choice",
        what each GEMM shape with alternatives runs at m (cuBLASLt or a small-M kernel) and the
        times that decided it."""
    def resident_programs(self) -> dict[str, int]:
        """{symbol: programs of its kernel this GPU runs at once}: the plan's resident symbols
        (occupancy a multiprocessor times NSM), fixed at load."""
    def describe(self) -> str: ...

class _GpuModule:
    """kiln._core.gpu: GPU plan executor internals, for tests and tools."""

    @staticmethod
    def eval_expr(expr: str, symbols: dict[str, int]) -> int: ...
    @staticmethod
    def device_count() -> int: ...
    @staticmethod
    def launch_cubin(
        cubin: bytes,
        name: str,
        grid: tuple[int, int, int],
        num_warps: int,
        shared: int,
        args: list[tuple[str, int | float]],
        num_extra_params: int,
    ) -> None: ...

gpu: _GpuModule
