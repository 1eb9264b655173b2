"""The ordered pass pipeline that turns a model's plain graph into an engine's plan."""
from __future__ import annotations

from typing import Callable

from kiln.builder.ir import Graph
from kiln.builder.passes.drop_dead_values import drop_dead_values
from kiln.builder.passes.fold_into_linears import fold_into_linears
from kiln.builder.passes.fold_residual_into_linears import fold_residual_into_linears
from kiln.builder.passes.fold_rope_into_attention import fold_rope_into_attention
from kiln.builder.passes.fuse_add_rmsnorm import fuse_add_rmsnorm
from kiln.builder.passes.fuse_gate_up import fuse_gate_up
from kiln.builder.passes.fuse_qkv import fuse_qkv
from kiln.builder.passes.gather_last_tokens import gather_last_tokens
from kiln.builder.passes.plan_memory import plan_memory
from kiln.builder.passes.quantize_fuse_producers import quantize_fuse_producers
from kiln.builder.passes.quantize_kv_cache import quantize_kv_cache
from kiln.builder.passes.quantize_linears import quantize_linears

Pass = Callable[[Graph, object], Graph]

PIPELINE: list[tuple[str, Pass]] = [
    # Phase 1: fewer, larger GEMMs.
    ("fuse_qkv", fuse_qkv),
    ("fuse_gate_up", fuse_gate_up),
    # Phase 2: attention takes pre-RoPE q/k and does RoPE + KV write + attention in one op.
    ("fold_rope_into_attention", fold_rope_into_attention),
    # Phase 3: the LM head on last tokens only (before the norm fusion, which it moves through).
    ("gather_last_tokens", gather_last_tokens),
    ("fuse_add_rmsnorm", fuse_add_rmsnorm),
    # Phase 4: quantization (no-ops unless --quant / --kv-cache-dtype ask): calibrate on the
    # fused plan, quantized GEMMs and KV cache, then quantization fused into norms / SiLU-mul.
    ("quantize_linears", quantize_linears),
    ("quantize_kv_cache", quantize_kv_cache),
    ("quantize_fuse_producers", quantize_fuse_producers),
    # Phase 5: clean up, the residual adds into the GEMMs before them, mark the norms the GEMMs
    # take in, and lay out memory.
    ("drop_dead_values", drop_dead_values),
    ("fold_residual_into_linears", fold_residual_into_linears),
    ("fold_into_linears", fold_into_linears),
    ("plan_memory", plan_memory),
]


def run_pipeline(graph: Graph, build, disabled: frozenset[str] = frozenset()) -> Graph:
    """Runs every pass in order; a disabled pass is a no-op so the pipeline keeps its shape."""
    for name, fn in PIPELINE:
        if name not in disabled:
            graph = fn(graph, build)
    graph.verify()
    return graph
