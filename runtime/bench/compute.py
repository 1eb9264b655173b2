"""A step's compute floor: the FLOPs it must do over the matmul rate measured in the same run.

Steps of many tokens (prompt chunks, decode steps of thousands of sequences) are bound by the
tensor cores, not by memory. Their floor is their GEMMs' and attention's FLOPs at the rate a
large matmul reaches on the device, measured like the copy bandwidth (what the hardware does,
rather than the datasheet's peak). FLOPs count 2 per multiply-add: a GEMM 2 K N a row; the
attention 4 x heads x head_dim a (query, key) pair (the score and the value it weighs).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from kiln.runtime.bench.roofline import time_repeated

GPU_MATMUL_N = 8192  # M = N = K of the timed GPU matmul (1.1 TFLOP)
CPU_MATMUL_N = 1024
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
        n, iterations = n or CPU_MATMUL_N, iterations or 3
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

    def of(self, tokens: float, sequences: float, pairs: float) -> float:
        return self.per_token * tokens + self.per_sequence * sequences + self.per_pair * pairs


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


def set_compute_floors(steps: dict, graph, sliding_window: bool, rate: MatmulRate) -> None:
    """Sets a run's step statistics (metrics.StepLog.timing) each kind of step's mean FLOPs
    (`tflop_mean`) and their time at `rate` (`compute_floor_ms`). A sliding window's attention
    scores fewer pairs than the keys counted, so there it is left out: still a floor."""
    flops = graph_step_flops(graph)
    prompt, decode = steps.get("with_prompt"), steps.get("decode_only")
    kinds = []
    if prompt and prompt.get("count"):
        kinds.append((prompt, prompt["prompt_tokens_mean"] + prompt["decode_tokens_mean"],
                      prompt["sequences_mean"], prompt["attention_pairs_mean"]))
    if decode and decode.get("count"):
        kinds.append((decode, decode["decode_tokens_mean"], decode["decode_tokens_mean"],
                      decode["context_tokens_mean"]))
    for kind, tokens, sequences, pairs in kinds:
        total = flops.of(tokens, sequences, 0.0 if sliding_window else pairs)
        kind["tflop_mean"] = total / 1e12
        kind["compute_floor_ms"] = 1e3 * total / rate.flops_per_s
