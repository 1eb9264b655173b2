"""Assembles the engine's "kernels" header section and cubin blobs from a lowered plan.

Header layout (docs/architecture.md, "GPU plan executor"):
  format, triton, targets, dtype, limits, arena_bytes, kv_cache, step_inputs, outputs,
  select {ref, capacity} (greedy tokens then log-probs; null: none),
  resident [[symbol, kernel id]] (programs of that kernel the GPU runs at once, counted at load),
  derived [[symbol, formula]], scratch {name: [size formulas]}, zeroed_scratch [names of
  scratch that holds zeros at load], constants {name: table},
  kernels {id: {fn, signature, constexprs, num_warps, num_stages, min_sm (where set: no
                binaries for older targets), sm: {"90": {blob, name, shared, params,
                num_extra_params, global_scratch_size, ...}}}},
  program [{kind: "kernel", kernel, grid, args, when} | {kind: "gemm", ...}]
"""
from __future__ import annotations

import triton

from kiln.builder.kernels.aot import compile_specs
from kiln.builder.kernels.lower import kernels_of, launches_of, lower, program_json

FORMAT = 1


def _kv_cache(graph, build) -> dict:
    """The paged cache's shape and storage dtype (build.kv_dtype: the engine's dtype, or
    float8_e4m3fn / int8 for --kv-cache-dtype fp8 / int8)."""
    attn = [n for n in graph.nodes if n.op == "attention"]
    if not attn:
        return {"num_layers": 0, "num_kv_heads": 0, "head_dim": 0,
                "tokens_per_block": build.tokens_per_block, "dtype": build.kv_dtype}
    a = attn[0].attrs
    for node in attn:
        if (node.attrs["num_kv_heads"], node.attrs["head_dim"]) != (a["num_kv_heads"], a["head_dim"]):
            raise ValueError("attention layers differ in num_kv_heads or head_dim; the paged "
                             "KV cache needs one shape for all layers")
        if (node.attrs.get("kv_dtype") or build.dtype) != build.kv_dtype:
            raise ValueError(f"attention layer {node.attrs['layer']} stores its KV cache as "
                             f"{node.attrs.get('kv_dtype') or build.dtype}, the build as "
                             f"{build.kv_dtype}: run the quantize_kv_cache pass")
    return {"num_layers": max(n.attrs["layer"] for n in attn) + 1,
            "num_kv_heads": a["num_kv_heads"], "head_dim": a["head_dim"],
            "tokens_per_block": build.tokens_per_block, "dtype": build.kv_dtype}


def _outputs(ctx) -> dict:
    out = {}
    for name in ctx.graph.of_kind("output"):
        v = ctx.graph.values[name]
        out[name] = {"ref": ctx.ref(name)[0], "dtype": v.dtype, "rows": str(v.shape[0]),
                     "cols": int(v.shape[-1])}
    return out


def build_bundle(graph, build, progress=None):
    """The header and cubins."""
    from kiln.builder.engine.writer import KernelBundle

    ctx = lower(graph, build)
    specs = kernels_of(ctx)
    jobs = [(key, sm) for key in specs for sm in build.targets if sm >= specs[key].min_sm]
    compiled = compile_specs([(specs[key], sm) for key, sm in jobs], progress)
    kernels, blobs = {}, {}
    for key in specs:
        kernels[key] = dict(specs[key].describe(), sm={})
    for (key, sm), one in zip(jobs, compiled):
        entry = kernels[key]
        blob = f"kernels/{key}.sm{sm}"
        blobs[blob] = one.cubin
        entry["sm"][str(sm)] = dict(one.meta, blob=blob)
    _check_global_scratch(ctx, kernels)
    header = {
        "format": FORMAT,
        "triton": triton.__version__,
        "targets": list(build.targets),
        "dtype": build.dtype,
        "limits": {"max_num_tokens": build.max_num_tokens, "max_batch_size": build.max_batch_size,
                   "max_seq_len": build.max_seq_len, "max_blocks_per_seq": build.max_blocks_per_seq,
                   "tokens_per_block": build.tokens_per_block},
        "arena_bytes": graph.memory_plan["arena_bytes"],
        "kv_cache": _kv_cache(graph, build),
        "step_inputs": {n: graph.values[n].dtype for n in graph.of_kind("input")},
        "outputs": _outputs(ctx),
        "select": ctx.select,
        "resident": [[name, key] for name, key in ctx.resident.items()],
        "derived": [[name, formula] for name, formula in ctx.derived.items()],
        "scratch": ctx.scratch_sizes,
        "zeroed_scratch": sorted(ctx.zeroed_scratch),
        "constants": ctx.constants,
        "kernels": kernels,
        "program": program_json(ctx),
    }
    return KernelBundle(header=header, blobs=blobs)


def _check_global_scratch(ctx, kernels: dict) -> None:
    """Every launch of a kernel compiled to need Triton's global scratch names the plan scratch
    it gets (the executor checks its size against the grid at each launch)."""
    for launch in launches_of(ctx):
        entry = kernels[launch.kernel.key]
        needs = max((meta.get("global_scratch_size", 0) for meta in entry["sm"].values()),
                    default=0)
        if needs and not launch.global_scratch:
            raise RuntimeError(f"{entry['fn']} ({launch.label}) needs {needs} bytes of global "
                               "scratch a program, which its launch does not give it "
                               "(LoweringContext.global_scratch)")
