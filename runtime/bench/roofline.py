"""The batch-1 decode roofline: one token cannot come faster than its weights can be read.

At batch 1 every decode step streams each weight matrix once, so
    roofline tokens/s = bytes read per token / memory bandwidth,
with the bandwidth measured in the same run as a large device-to-device copy (what a kernel
that only reads and writes memory achieves, rather than the datasheet's peak). KV cache reads
are left out: they only lower the true ceiling, so the fraction reported is conservative.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from kiln.builder.ir import dtype_size

GPU_COPY_BYTES = 1 << 30
CPU_COPY_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class Bandwidth:
    bytes_per_s: float
    method: str
    buffer_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def time_repeated(run, iterations: int, device: str) -> float:
    """Seconds `iterations` back-to-back calls of `run` take (after one untimed call): CUDA
    events on a GPU, the host clock on the CPU."""
    run()
    if device != "cuda":
        start = time.perf_counter()
        for _ in range(iterations):
            run()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iterations):
        run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def measure_copy_bandwidth(device: str, nbytes: int | None = None,
                           iterations: int | None = None) -> Bandwidth:
    """Copy bandwidth counting read + write bytes: CUDA events on a GPU, the host clock on CPU."""
    if device == "cuda":
        nbytes = nbytes or min(GPU_COPY_BYTES, torch.cuda.mem_get_info()[0] // 4)
        iterations = iterations or 20
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        method = (f"device-to-device copy of {nbytes >> 20} MiB on {torch.cuda.get_device_name()}, "
                  "timed with CUDA events")
    else:
        nbytes = nbytes or CPU_COPY_BYTES
        iterations = iterations or 5
        src = torch.ones(nbytes, dtype=torch.uint8)
        method = f"host memcpy of {nbytes >> 20} MiB (no GPU: the CPU backend's bound), host clock"
    dst = torch.empty_like(src)
    if device == "cuda":
        for _ in range(2):  # with time_repeated's untimed one, three copies before the timed
            dst.copy_(src)
    seconds = time_repeated(lambda: dst.copy_(src), iterations, device)
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()  # the runner sizes its KV cache from the memory left free
    return Bandwidth(2 * nbytes * iterations / seconds, method, nbytes)


def weight_bytes(engine) -> int:
    """Bytes of every weight in the engine."""
    return sum(t.numel() * t.element_size() for t in engine.weights.values())


def decode_bytes_per_token(engine) -> int:
    """Weight bytes one batch-1 decode step of the engine reads (graph_decode_bytes)."""
    return graph_decode_bytes(engine.graph)


def graph_decode_bytes(graph, table_row_only: bool = True) -> int:
    """Weight bytes one batch-1 decode step of a plan reads: all of a weight, except a table
    that only an embedding lookup reads, of which one row is read (all of it where not
    `table_row_only`: a bound on the safe side), and a mixture of experts' stacked expert
    weights, of which the token's top_k experts are read."""
    users: dict[str, set[str]] = {}
    read_of_moe: dict[str, float] = {}  # expert stacks: the fraction a token reads
    for node in graph.nodes:
        for name in node.inputs:
            users.setdefault(name, set()).add(node.op)
        if node.op == "moe":
            for name in node.inputs[2:4]:
                read_of_moe[name] = node.attrs["top_k"] / graph.values[name].shape[0]
    total = 0
    for name in graph.of_kind("weight"):
        value = graph.values[name]
        size = dtype_size(value.dtype)
        for d in value.shape:
            size *= d
        if users.get(name) == {"embedding"} and table_row_only:
            size //= value.shape[0]
        elif users.get(name) == {"moe"}:
            size = round(size * read_of_moe[name])
        total += size
    return total


@dataclass(frozen=True, slots=True)
class Roofline:
    weight_bytes: int
    bytes_per_token: int
    bandwidth: Bandwidth

    @property
    def tokens_per_s(self) -> float:
        return self.bandwidth.bytes_per_s / self.bytes_per_token

    def fraction(self, tokens_per_s: float) -> float:
        return tokens_per_s / self.tokens_per_s

    def to_json(self, kiln_tokens_per_s: float | None) -> dict:
        return {"weight_bytes": self.weight_bytes, "bytes_per_token": self.bytes_per_token,
                "bandwidth": self.bandwidth.to_json(), "tokens_per_s": self.tokens_per_s,
                "kiln_tokens_per_s": kiln_tokens_per_s,
                "fraction": None if kiln_tokens_per_s is None else self.fraction(kiln_tokens_per_s)}

    def decode_step_s(self, kv_bytes_per_token: int, context_tokens: float) -> float:
        """The least time of a decode-only step whose sequences attend to `context_tokens` keys
        in all: the weights read once (as a batch-1 step reads them) and every key and value. A
        memory floor: a step whose GEMMs are compute-bound (large batches) takes longer anyway."""
        kv = kv_bytes_per_token * context_tokens
        return (self.bytes_per_token + kv) / self.bandwidth.bytes_per_s

