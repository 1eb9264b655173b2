"""A step's floor: its GEMMs and its attention each at the larger of their FLOPs over the
matmul rate and their bytes over the copy bandwidth, both measured in the same run.

The kernels of a step run one after another, so its floor is the sum of theirs, and each kind
is bound by compute or by memory: the GEMMs read every weight once and do 2 K N FLOPs a row (a
decode step of thousands of sequences is compute-bound, one of a hundred is not); a decode's
attention reads its context's K and V (memory-bound); a prompt chunk's scores 4 x heads x
head_dim FLOPs a (query, key) pair and reads its context once at least (compute-bound when
long). The matmul rate is what a large matmul of random operands reaches on the device,
measured like the copy bandwidth (what the hardware does, rather than the datasheet's peak).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from kiln.runtime.bench.roofline import time_repeated

GPU_MATMUL_N = 8192  # M = N = K of the timed GPU matmul (1.1 TFLOP)
# On the CPU: float32 ran at ~170 GFLOP/s on the 2-core CI machine, bfloat16 and float16 at ~1
# (no 16-bit matrix instructions there), so theirs is smaller, timed in well under a second.
CPU_MATMUL_N = {"float32": 1024, "bfloat16": 256, "float16": 256}
GEMM_OPS = ("linear", "linear_fp8", "linear_w8a8", "linear_wo")


@dataclass(frozen=True, slots=True)
class MatmulRate:
    flops_per_s: float
    dtype: str
    method: str

    def to_json(self) -> dict:
        return asdict(self)


def gemm_dtype(build) -> str | None:
    """The dtype an engine's large GEMMs multiply in: e4m3 for --quant fp8; the build's dtype
    without quantization and for the weight-only modes (their many-row GEMMs dequantize the
    weight into it); None for int8_sq, whose INT8 rate is not measured."""
    if build.quant == "fp8":
        return "float8_e4m3fn"
    if build.quant == "int8_sq":
        return None
    return build.dtype


def engine_matmul_rate(device: str, build) -> MatmulRate | None:
    """The matmul rate of an engine's GEMM dtype (gemm_dtype) on the device, or None where
    it has none."""
    dtype = gemm_dtype(build)
    return measure_matmul_rate(device, dtype) if dtype else None


def measure_matmul_rate(device: str, dtype: str, n: int | None = None,
                        iterations: int | None = None) -> MatmulRate | None:
    """FLOP/s of an n x n x n matmul of random operands in `dtype` (e4m3 through
    torch._scaled_mm with per-tensor scales, as the FP8 GEMMs run): CUDA events on a GPU, the
    host clock on the CPU. None where the device has no such matmul (e4m3 before SM 89, or
    on the CPU)."""
    fp8 = dtype == "float8_e4m3fn"
    if device == "cuda":
        if fp8 and torch.cuda.get_device_capability() < (8, 9):
            return None
        n, iterations = n or GPU_MATMUL_N, iterations or 10
    else:
        if fp8:
            return None
        n, iterations = n or CPU_MATMUL_N[dtype], iterations or 3
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=g, device=device)
    b = torch.randn((n, n), generator=g, device=device)
    if fp8:
        scale = torch.ones((), device=device)
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()  # b column-major

        def run():
            return torch._scaled_mm(a8, b8, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
    else:
        a, b = a.to(getattr(torch, dtype)), b.to(getattr(torch, dtype))

        def run():
            return a @ b
    seconds = time_repeated(run, iterations, device)
    where = torch.cuda.get_device_name() if device == "cuda" else "the CPU"
    clock = "timed with CUDA events" if device == "cuda" else "host clock"
    method = f"{n} x {n} x {n} {dtype} matmul on {where}, {clock}"
    del a, b
    if device == "cuda":
        torch.cuda.empty_cache()  # the runner sizes its KV cache from the memory left free
    return MatmulRate(2 * n ** 3 * iterations / seconds, dtype, method)


@dataclass(frozen=True, slots=True)
class StepFlops:
    """A plan's FLOPs by what they scale with: each token of a step (the GEMMs over T rows),
    each sequence (those over B rows: the LM head and whatever runs on the last tokens only)
    and each (query, key) pair its attention scores."""
    per_token: float
    per_sequence: float
    per_pair: float

    def gemm(self, tokens: float, sequences: float) -> float:
        return self.per_token * tokens + self.per_sequence * sequences

    def of(self, tokens: float, sequences: float, pairs: float) -> float:
        return self.gemm(tokens, sequences) + self.per_pair * pairs


def graph_step_flops(graph) -> StepFlops:
    """StepFlops of a plan: its GEMMs' 2 K N a row, over the rows their input has (T or B); a
    mixture of experts' 2 top_k (2I H + H I) a token (the experts it routes to); 4 heads x
    head_dim a pair in each attention layer."""
    per = {"T": 0.0, "B": 0.0}
    pair = 0.0
    for node in graph.nodes:
        if node.op == "attention":
            pair += 4 * node.attrs["num_heads"] * node.attrs["head_dim"]
            continue
        if node.op not in GEMM_OPS and node.op != "moe":
            continue
        x = graph.values[node.inputs[0]].shape
        if x[0] not in per:
            raise ValueError(f"{node.op} {node.outputs[0]} runs over {x[0]!r} rows, neither the "
                             "step's tokens (T) nor its sequences (B)")
        if node.op == "moe":
            _, two_i, h = graph.values[node.inputs[2]].shape
            per[x[0]] += 2 * node.attrs["top_k"] * (two_i * h + h * two_i // 2)
        else:
            n = graph.values[node.inputs[2 if node.op == "linear_w8a8" else 1]].shape[0]
            per[x[0]] += 2 * x[-1] * n
    return StepFlops(per["T"], per["B"], pair)


def _bound(flops: float, nbytes: float, rate: float, bandwidth: float) -> dict:
    compute, memory = flops / rate, nbytes / bandwidth
    return {"ms": 1e3 * max(compute, memory), "bound": "compute" if compute >= memory else "memory"}


def set_step_floors(steps: dict, graph, weight_bytes: int, kv_bytes_per_token: int,
                    bandwidth: float, rate: MatmulRate) -> None:
    """Sets a run's step statistics (metrics.StepLog.timing) each kind of step's mean FLOPs
    (`tflop_mean`), its floor (`floor_ms`) and the floor's parts (`floor_parts`: the GEMMs, the
    decodes' attention where there are decodes, the prompt chunks' attention; each its ms and
    what bounds it).
    `weight_bytes`: what a step's GEMMs read (the batch-1 roofline's bytes a token); for a
    model whose layers attend to every key (a sliding window's read fewer)."""
    flops = graph_step_flops(graph)
    prompt, decode = steps.get("with_prompt"), steps.get("decode_only")
    kinds = []  # (stats, tokens, sequences, decodes' keys, prompt chunks' pairs and keys)
    if prompt and prompt.get("count"):
        kinds.append((prompt, prompt["prompt_tokens_mean"] + prompt["decode_tokens_mean"],
                      prompt["sequences_mean"], prompt["decode_context_tokens_mean"],
                      prompt["prompt_attention_pairs_mean"], prompt["prompt_context_tokens_mean"]))
    if decode and decode.get("count"):
        kinds.append((decode, decode["decode_tokens_mean"], decode["decode_tokens_mean"],
                      decode["context_tokens_mean"], 0.0, 0.0))
    r = rate.flops_per_s
    for kind, tokens, sequences, decode_keys, chunk_pairs, chunk_keys in kinds:
        parts = {"gemms": _bound(flops.gemm(tokens, sequences), weight_bytes, r, bandwidth)}
        if decode_keys:
            parts["decode_attention"] = _bound(flops.per_pair * decode_keys,
                                               kv_bytes_per_token * decode_keys, r, bandwidth)
        if chunk_keys:
            parts["prompt_attention"] = _bound(flops.per_pair * chunk_pairs,
                                               kv_bytes_per_token * chunk_keys, r, bandwidth)
        kind["tflop_mean"] = flops.of(tokens, sequences, decode_keys + chunk_pairs) / 1e12
        kind["floor_parts"] = parts
        kind["floor_ms"] = sum(part["ms"] for part in parts.values())
