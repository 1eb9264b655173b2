"""Engine limits for a throughput run, from the dataset's lengths and the GPU's memory.

A throughput run is fastest when as many sequences run at once as the KV cache holds: every
decode step reads the weights once, whatever its batch, and a batch capped below what the cache
holds leaves that reading to fewer tokens. So the engine's max batch size is the number of
requests the cache holds at the dataset's lengths (prompt + output), and its max num tokens is
what a step needs to keep that batch full: each step decodes one token for each of `batch`
sequences, and `batch / output` of them finish, whose replacements bring `input` prompt tokens
each, so a step carries `batch * (1 + input / output)` tokens.

The KV cache's size is an estimate made before the engine exists: the GPU's memory less the
weights and a reserve for activations and the CUDA context, times the fraction of free memory
the runtime gives the cache (`kv_cache_free_gpu_memory_fraction`).
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.builder.errors import KilnError
from kiln.builder.ir import dtype_size
from kiln.builder.models.config import BUILD_DTYPES, kv_dtype_of

GIB = 1 << 30
# The most sequences an engine is built for here: past it the batch's own buffers (logits rows,
# block tables) grow large and a step's tokens outrun max num tokens.
MAX_BATCH = 4096
# Batch sizes are multiples of this: CUDA graphs are captured per bucket of 32 sequences above
# 128 (csrc/gpu/plan_executor.cpp, batchBucket).
BATCH_STEP = 32
# Max num tokens: at least the 8,192 the speed figures are measured with (long prompts run in
# chunks of that size), at most 16,384 (activations grow with it), in steps of 1,024.
MIN_TOKENS, MAX_TOKENS, TOKENS_STEP = 8192, 16384, 1024
# Outputs whose standard deviation exceeds this share of their mean do not finish in waves.
WAVE_SPREAD = 0.25
# Memory the engine needs beside its weights and KV cache: activations of max num tokens,
# cuBLASLt's workspace, the CUDA context (a few GiB on a GPU of 80 GiB or more).
RESERVE_FRACTION = 0.05

# Bytes a linear layer's weight takes per parameter, by quantization mode; the embedding and
# the LM head stay in the build dtype. int4: half a byte, plus a float16 scale per 128 values.
LINEAR_BYTES = {"none": None, "fp8": 1.0, "int8_sq": 1.0, "int8_wo": 1.0,
                "int4_awq": 0.5 + 2 / 128, "int4_gptq": 0.5 + 2 / 128}


@dataclass(frozen=True)
class EngineSettings:
    """What `engine-build` gets for a dataset, and the estimates behind it."""
    max_batch_size: int
    max_num_tokens: int
    max_seq_len: int
    weight_bytes: float
    kv_cache_bytes: float
    kv_bytes_per_token: int
    requests_in_cache: float
    input_len: float
    output_len: float
    output_spread: float = 0.0

    def limits(self) -> dict[str, int]:
        """engine-build's limits by option name (max_batch_size, ...)."""
        return {"max_batch_size": self.max_batch_size, "max_num_tokens": self.max_num_tokens,
                "max_seq_len": self.max_seq_len}

    def run_batch(self, num_requests: int) -> int:
        """The batch a throughput run of `num_requests` such requests is capped at.

        Requests admitted together decode together and, of equal lengths, finish together. When
        filling the batch takes under half of their decode steps, the run goes in waves, and a
        last wave much smaller than the others decodes at a small batch, where a step costs
        nearly what a full one does (the weights are read whatever the batch); so the waves are
        made equal. Where prompts are long beside the outputs, or the outputs' lengths spread
        (their standard deviation over a quarter of their mean), requests are admitted and
        finish throughout the run, and the batch is what the cache holds."""
        holds = max(1, min(self.max_batch_size, int(self.requests_in_cache)))
        fill_steps = holds * self.input_len / self.max_num_tokens
        if (num_requests <= holds or 2 * fill_steps >= self.output_len
                or self.output_spread > WAVE_SPREAD):
            return self.max_batch_size
        waves = -(-num_requests // holds)
        return -(-num_requests // waves)

    def describe(self, num_requests: int | None = None) -> str:
        runs = ""
        if num_requests is not None:
            runs = f"; its {num_requests} requests run at batch {self.run_batch(num_requests)}"
        return (f"weights ~{self.weight_bytes / GIB:.1f} GiB, KV cache ~{self.kv_cache_bytes / GIB:.1f} "
                f"GiB at {self.kv_bytes_per_token} bytes a token: ~{self.requests_in_cache:.0f} "
                f"requests of the dataset's lengths -> max batch {self.max_batch_size}, max num "
                f"tokens {self.max_num_tokens}, max seq len {self.max_seq_len}{runs}")


def weight_bytes(model, dtype: str, quant: str) -> float:
    """Bytes of the engine's weights: the linear layers at the mode's width, the rest at dtype's."""
    if quant not in LINEAR_BYTES:
        raise KilnError(f"unknown quantization mode {quant!r}; one of {', '.join(LINEAR_BYTES)}")
    width = dtype_size(dtype)
    h = model.hidden_size
    tables = model.vocab_size * h * (1 if model.tie_word_embeddings else 2)
    linear = model.num_params() - tables - (2 * model.num_layers + 1) * h
    per = LINEAR_BYTES[quant] if LINEAR_BYTES[quant] is not None else width
    return (tables + (2 * model.num_layers + 1) * h) * width + linear * per


def kv_bytes_per_token(model, dtype: str, kv_cache_dtype: str) -> int:
    """K and V of one token over every layer."""
    width = dtype_size(kv_dtype_of(kv_cache_dtype, dtype))
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * width


def _round_up(value: float, step: int) -> int:
    return int(-(-value // step) * step)


def engine_settings(model, *, dtype: str, quant: str, kv_cache_dtype: str, gpu_memory: float,
                    input_len: float, output_len: float, max_len: int,
                    kv_fraction: float = 0.9, tokens_per_block: int = 32,
                    max_batch_size: int | None = None, output_spread: float = 0.0) -> EngineSettings:
    """Max batch size, max num tokens and max seq len for requests of `input_len` prompt and
    `output_len` output tokens on average (`max_len` the longest prompt + output; the outputs'
    standard deviation `output_spread` times their mean) on a GPU of `gpu_memory` bytes; max
    num tokens for `max_batch_size` where it is given."""
    if dtype not in BUILD_DTYPES:
        raise KilnError(f"unknown dtype {dtype!r}; one of {', '.join(BUILD_DTYPES)}")
    if input_len <= 0 or output_len <= 0:
        raise KilnError(f"the dataset's mean lengths must be positive, got input {input_len} and "
                        f"output {output_len}")
    if not 0.0 < kv_fraction <= 1.0:
        raise KilnError(f"the KV cache's fraction of free memory must be in (0, 1], got {kv_fraction}")
    if max_len > model.max_position_embeddings:
        raise KilnError(f"the dataset's longest request ({max_len} tokens, prompt + output) exceeds "
                        f"the model's {model.max_position_embeddings} positions; use shorter requests")
    weights = weight_bytes(model, dtype, quant)
    free = gpu_memory * (1 - RESERVE_FRACTION) - weights
    if free <= 0:
        raise KilnError(f"the weights (~{weights / GIB:.1f} GiB) leave no memory for a KV cache on "
                        f"a GPU of {gpu_memory / GIB:.1f} GiB; quantize them (--quant) or use a "
                        "larger GPU")
    per_token = kv_bytes_per_token(model, dtype, kv_cache_dtype)
    cache = free * kv_fraction
    requests = cache / per_token / (input_len + output_len)
    if requests < 1:
        raise KilnError(f"the KV cache (~{cache / GIB:.2f} GiB) holds no request of the dataset's "
                        f"lengths ({input_len:.0f} + {output_len:.0f} tokens); use shorter requests "
                        "or a larger GPU")
    batch = (min(MAX_BATCH, _round_up(requests, BATCH_STEP)) if max_batch_size is None
             else max_batch_size)
    tokens = _round_up(batch * (1 + input_len / output_len), TOKENS_STEP)
    tokens = max(MIN_TOKENS, min(MAX_TOKENS, tokens), batch)
    seq_len = min(_round_up(max_len, tokens_per_block), model.max_position_embeddings)
    return EngineSettings(batch, tokens, seq_len, weights, cache, per_token, requests, input_len,
                          output_len, output_spread)
