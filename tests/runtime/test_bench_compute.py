"""A plan's FLOPs a step (runtime/bench/compute.py) against torch's own count of the reference
backend running the plan, and the matmul rate on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kiln.builder.engine import load_engine
from kiln.builder.models import BuildConfig
from kiln.runtime.bench.compute import (MatmulRate, StepFlops, gemm_dtype, graph_step_flops,
                                        measure_matmul_rate, set_step_floors)
from kiln.runtime.reference import ReferenceBackend


def _counted(backend: ReferenceBackend, lengths: list[int], starts: list[int]) -> int:
    """torch's FLOP count of one step: sequence i computes lengths[i] tokens from position
    starts[i] (its earlier positions already cached)."""
    tpb = backend.engine.config.build.tokens_per_block
    per = backend.engine.config.build.max_blocks_per_seq
    b = len(lengths)
    tables = np.arange(b * per, dtype=np.int32).reshape(b, per)
    pos = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]).astype(np.int32)
    seq = np.repeat(np.arange(b), lengths)
    step = {"input_ids": np.random.default_rng(0).integers(0, 300, pos.size).astype(np.int32),
            "positions": pos,
            "slot_mapping": (tables[seq, pos // tpb].astype(np.int64) * tpb + pos % tpb),
            "block_tables": tables,
            "context_lens": np.array([s + n for s, n in zip(starts, lengths)], np.int32),
            "query_start": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
            "last_token_index": (np.cumsum(lengths) - 1).astype(np.int32)}
    with FlopCounterMode(display=False) as counter:
        backend.forward(step)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def llama(tiny_engine):
    engine = load_engine(tiny_engine("llama")[1])
    backend = ReferenceBackend.for_engine(engine, max_batch_size=3)
    backend.kv_cache.zero_()  # the steps below read cache slots no earlier step wrote
    return engine, backend


def test_a_decode_step_counts_what_torch_counts(llama):
    engine, backend = llama
    flops = graph_step_flops(engine.graph)
    # Three sequences decode one token at positions 9, 20 and 4: 10 + 21 + 5 keys.
    assert _counted(backend, [1, 1, 1], [9, 20, 4]) == flops.of(3, 3, 10 + 21 + 5)


def test_a_prompt_step_counts_what_torch_counts(llama):
    engine, backend = llama
    flops = graph_step_flops(engine.graph)
    # The reference scores every query against every key of its context (masking after), so
    # torch counts the rectangle: 7 queries x 7 keys, and 4 x (5 + 4) for a chunk after 5.
    assert _counted(backend, [7, 4], [0, 5]) == flops.of(11, 2, 7 * 7 + 4 * 9)
    # What each part scales with: the layers' GEMMs by token, the LM head (and the last
    # layer's MLP, after the last tokens are gathered) by sequence.
    m = engine.config.model
    h, hd, i = m.hidden_size, m.head_dim, m.intermediate_size
    qkvo = 2 * h * hd * (2 * m.num_heads + 2 * m.num_kv_heads)
    assert flops.per_pair == 4 * m.num_heads * hd * m.num_layers
    assert flops.per_token + flops.per_sequence == (m.num_layers * (qkvo + 2 * 3 * h * i)
                                                    + 2 * h * m.vocab_size)
    assert flops.per_sequence >= 2 * h * m.vocab_size


def test_a_mixture_counts_the_experts_a_token_reaches(tiny_engine):
    engine = load_engine(tiny_engine("mixtral")[1])
    m = engine.config.model
    flops = graph_step_flops(engine.graph)
    h, hd = m.hidden_size, m.head_dim
    qkvo = 2 * h * hd * (2 * m.num_heads + 2 * m.num_kv_heads)
    experts = 2 * m.experts_per_token * 3 * h * m.moe_intermediate_size
    router = 2 * h * m.num_experts
    assert flops.per_token + flops.per_sequence == (m.num_layers * (qkvo + experts + router)
                                                    + 2 * h * m.vocab_size)


def test_each_kind_of_step_at_its_floor(llama):
    """GEMMs and each attention at the larger of FLOPs / rate and bytes / bandwidth, summed."""
    engine, _ = llama
    flops = graph_step_flops(engine.graph)
    rate, bandwidth, weights, kv = MatmulRate(2e12, "float32", "test"), 1e11, 10 ** 6, 1000
    steps = {"with_prompt": {"count": 2, "ms_mean": 9.0, "prompt_tokens_mean": 30.0,
                             "decode_tokens_mean": 2.0, "decode_context_tokens_mean": 80.0,
                             "sequences_mean": 3.0, "prompt_context_tokens_mean": 30.0,
                             "prompt_attention_pairs_mean": 465.0},
             "decode_only": {"count": 5, "ms_mean": 1.0, "decode_tokens_mean": 4.0,
                             "context_tokens_mean": 90.0},
             "decode_tokens_mean": 3.0}
    set_step_floors(steps, engine.graph, weights, kv, bandwidth, rate)

    def part(f, nbytes):
        c, m = f / 2e12, nbytes / bandwidth
        return {"ms": 1e3 * max(c, m), "bound": "compute" if c >= m else "memory"}
    prompt, decode = steps["with_prompt"], steps["decode_only"]
    assert prompt["floor_parts"] == {
        "gemms": part(flops.gemm(32, 3), weights),
        "decode_attention": part(flops.per_pair * 80, kv * 80),
        "prompt_attention": part(flops.per_pair * 465, kv * 30)}
    assert decode["floor_parts"] == {"gemms": part(flops.gemm(4, 4), weights),
                                     "decode_attention": part(flops.per_pair * 90, kv * 90)}
    for kind in (prompt, decode):
        assert kind["floor_ms"] == sum(p["ms"] for p in kind["floor_parts"].values())
    assert prompt["tflop_mean"] * 1e12 == pytest.approx(flops.of(32, 3, 80 + 465))
    assert decode["tflop_mean"] * 1e12 == pytest.approx(flops.of(4, 4, 90))
    # This tiny model's bytes outweigh its FLOPs at these rates: every part memory-bound; at a
    # slow enough matmul, every part compute-bound.
    assert {p["bound"] for p in decode["floor_parts"].values()} == {"memory"}
    set_step_floors(steps, engine.graph, weights, kv, bandwidth, MatmulRate(1e6, "float32", "slow"))
    assert {p["bound"] for p in decode["floor_parts"].values()} == {"compute"}
    assert decode["floor_ms"] == pytest.approx(1e3 * flops.of(4, 4, 90) / 1e6)
    alone = {"with_prompt": dict(steps["with_prompt"], decode_tokens_mean=0.0,
                                 decode_context_tokens_mean=0.0), "decode_only": {"count": 0}}
    set_step_floors(alone, engine.graph, weights, kv, bandwidth, rate)  # prompts alone
    assert alone["with_prompt"]["floor_parts"].keys() == {"gemms", "prompt_attention"}
    empty = {"with_prompt": {"count": 0}, "decode_only": {"count": 0}}
    set_step_floors(empty, engine.graph, weights, kv, bandwidth, rate)
    assert empty == {"with_prompt": {"count": 0}, "decode_only": {"count": 0}}


def test_step_flops_add_up():
    assert StepFlops(10.0, 100.0, 1.0).of(3, 2, 50) == 30 + 200 + 50


def test_matmul_rate_on_the_cpu_and_the_gemm_dtype():
    rate = measure_matmul_rate("cpu", "float32", n=256, iterations=2)
    assert rate.flops_per_s > 0 and rate.dtype == "float32"
    assert rate.method == "256 x 256 x 256 float32 matmul on the CPU, host clock"
    assert measure_matmul_rate("cpu", "float8_e4m3fn") is None
    assert measure_matmul_rate("cpu", "bfloat16").method.startswith("256 x 256 x 256 bfloat16")
    assert gemm_dtype(BuildConfig(dtype="bfloat16")) == "bfloat16"
    assert gemm_dtype(BuildConfig(dtype="bfloat16", quant="fp8", targets=[89, 90])) == "float8_e4m3fn"
    assert gemm_dtype(BuildConfig(dtype="float16", quant="int4_awq")) == "float16"
    assert gemm_dtype(BuildConfig(dtype="bfloat16", quant="int8_sq")) is None
