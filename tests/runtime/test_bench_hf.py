"""The HuggingFace baseline computes the engine's function: its weights mapped back to HF names."""
from __future__ import annotations

import pytest
import torch
import transformers

from kiln.builder.engine import load_engine
from kiln.builder.errors import KilnError
from kiln.runtime.bench.baseline_hf import (hf_state_dict, load_hf_model, paired_weights,
                                            run_hf_throughput)
from kiln.runtime.bench.dataset import BenchRequest

ARCHS = ["llama", "llama-tied", "mistral", "qwen2", "qwen3", "phi3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_model_from_the_engine_equals_the_checkpoint(tiny_engine, arch):
    ckpt, engine_dir = tiny_engine(arch)
    model, weights = load_hf_model(load_engine(engine_dir), "cpu")
    assert weights == "the engine's weights"
    reference = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    ids = torch.randint(0, model.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_hf_model_from_a_16_bit_engine_equals_the_checkpoint(tiny_engine, dtype):
    """A 16-bit engine holds its gate/up rows in pairs (passes/fuse_gate_up.py): mapped back,
    they are HF's gate and up again."""
    ckpt, engine_dir = tiny_engine("llama", dtype)
    engine = load_engine(engine_dir)
    assert paired_weights(engine.graph) == {f"layers.{i}.gate_up.weight" for i in range(2)}
    model, weights = load_hf_model(engine, "cpu")
    assert weights == "the engine's weights"
    want = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype))
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())


def test_unmappable_weights_fall_back_to_random_ones_and_say_so(tiny_engine):
    engine = load_engine(tiny_engine("llama")[1])
    engine.weights["layers.0.qkv.weight_scale"] = torch.ones(1)
    model, weights = load_hf_model(engine, "cpu")
    assert weights == ("random weights of the same shape (engine weight "
                       "layers.0.qkv.weight_scale has no HuggingFace counterpart)")
    assert isinstance(model, transformers.LlamaForCausalLM)
    engine = load_engine(tiny_engine("llama")[1])
    engine.weights["layers.1.down.weight"] = engine.weights["layers.1.down.weight"].to(torch.int8)
    assert load_hf_model(engine, "cpu")[1] == ("random weights of the same shape (engine weight "
                                               "layers.1.down.weight is stored as torch.int8, not "
                                               "the engine's float32)")


def test_heads_laid_out_for_partial_rope_fall_back_to_random_weights(tiny_engine):
    model, weights = load_hf_model(load_engine(tiny_engine("phi3-longrope")[1]), "cpu")
    assert weights.startswith("random weights of the same shape (the engine's q and k head dims")
    assert isinstance(model, transformers.Phi3ForCausalLM)
    rope = model.config.rope_parameters
    assert (rope["rope_type"], rope["partial_rotary_factor"]) == ("longrope", 0.75)


def test_fused_weights_are_split_back(tiny_engine):
    engine = load_engine(tiny_engine("qwen2")[1])
    state = hf_state_dict(engine)
    qkv = engine.weights["layers.1.qkv.bias"]
    assert torch.equal(torch.cat([state[f"model.layers.1.self_attn.{p}_proj.bias"] for p in "qkv"]), qkv)
    assert state["model.layers.1.self_attn.q_proj.weight"].shape == (64, 64)
    assert state["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)


def test_static_batches_force_each_output_length(tiny_engine):
    engine = load_engine(tiny_engine("llama")[1])
    model, weights = load_hf_model(engine, "cpu")
    g = torch.Generator().manual_seed(0)
    reqs = [BenchRequest(i, torch.randint(0, 320, (n,), generator=g).tolist(), m)
            for i, (n, m) in enumerate([(5, 3), (9, 7), (2, 1), (6, 4), (3, 2)])]
    run = run_hf_throughput(model, weights, reqs, batch_size=2, device="cpu")
    assert run.num_requests == 5 and run.batch_size == 2
    assert run.metrics.total_output_tokens == 3 + 7 + 1 + 4 + 2
    assert run.metrics.itl_ms is not None and run.metrics.ttft_ms.p50 > 0


def test_running_out_of_memory_halves_the_batch(monkeypatch):
    from kiln.runtime.bench import baseline_hf

    sizes = []

    def fake_generate(model, batch, device, clock):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [float(len(sizes) + k) for k in range(max(r.output_tokens for r in batch))]

    monkeypatch.setattr(baseline_hf, "_generate", fake_generate)
    reqs = [BenchRequest(i, [1] * 4, 3) for i in range(7)]
    run = run_hf_throughput(None, "w", reqs, batch_size=8, device="cpu", clock=lambda: 0.0)
    # warm-up (1), then 8 -> OOM, 4 -> OOM, then batches of 2, 2, 2, 1.
    assert sizes == [1, 7, 4, 2, 2, 2, 1]
    assert run.batch_size == 2 and run.num_requests == 7 and run.metrics.total_output_tokens == 21

    def never_fits(model, batch, device, clock):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(baseline_hf, "_generate", never_fits)
    with pytest.raises(KilnError, match="HuggingFace runs out of GPU memory even at batch 1; drop "
                                        "--baseline or use shorter requests"):
        run_hf_throughput(None, "w", reqs[:1], batch_size=1, device="cpu")
