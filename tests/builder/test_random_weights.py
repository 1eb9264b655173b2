"""Random weights of real model shapes: exact shapes, seeded values, and engine-build --random-weights."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from kiln.builder.cli import build_main
from kiln.builder.engine import load_engine
from kiln.builder.errors import KilnError
from kiln.builder.model_shapes import SHAPE_NAMES, real_config
from kiln.builder.models import ModelConfig
from kiln.builder.random_weights import RandomCheckpoint

# Parameter counts of the released models (biases included), as their model cards give them.
PUBLISHED_PARAMS = {"llama-3.1-8b": 8_030_261_248, "llama-3.2-1b": 1_235_814_400,
                    "qwen2.5-7b": 7_615_616_512, "mistral-7b": 7_248_023_552,
                    "qwen3-30b-a3b": 30.5e9}  # the last as its card rounds it


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_shapes_add_up_to_the_released_models(name):
    ckpt = RandomCheckpoint(name)
    total = sum(math.prod(ckpt.meta(n)[0]) for n in ckpt.names())
    published = PUBLISHED_PARAMS[name]
    assert total == pytest.approx(published, rel=2e-3 if isinstance(published, float) else 0)
    assert all(ckpt.meta(n)[1] == torch.bfloat16 for n in ckpt.names())


def test_configs_are_the_real_ones():
    m = ModelConfig.from_hf(real_config("llama-3.1-8b"))
    assert (m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads,
            m.num_kv_heads, m.head_dim, m.max_position_embeddings, m.rope_theta) == \
        (128256, 4096, 14336, 32, 32, 8, 128, 131072, 500000.0)
    assert m.rope_scaling == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    assert not m.tie_word_embeddings and not m.attention_bias
    m = ModelConfig.from_hf(real_config("llama-3.2-1b"))
    assert (m.hidden_size, m.num_layers, m.head_dim, m.tie_word_embeddings) == (2048, 16, 64, True)
    assert m.rope_scaling["factor"] == 32.0
    m = ModelConfig.from_hf(real_config("qwen2.5-7b"))
    assert (m.architecture, m.vocab_size, m.num_kv_heads, m.attention_bias, m.sliding_window,
            m.rms_norm_eps) == ("Qwen2ForCausalLM", 152064, 4, True, None, 1e-6)
    m = ModelConfig.from_hf(real_config("mistral-7b"))
    assert (m.architecture, m.vocab_size, m.sliding_window, m.rope_theta,
            m.max_position_embeddings) == ("MistralForCausalLM", 32768, None, 1e6, 32768)
    m = ModelConfig.from_hf(real_config("qwen3-30b-a3b"))
    assert (m.num_experts, m.experts_per_token, m.moe_intermediate_size, m.moe_layers,
            m.moe_renormalize, m.qk_norm) == (128, 8, 768, None, True, True)
    assert real_config("nope") is None


def test_unknown_name_is_refused_with_the_list():
    with pytest.raises(KilnError, match="unknown model shape 'llama-9'.*llama-3.1-8b, llama-3.2-1b, "
                                        "qwen2.5-7b, mistral-7b"):
        RandomCheckpoint("llama-9")
    with pytest.raises(KilnError, match="--random-layers 17 is outside 1..16"):
        RandomCheckpoint("llama-3.2-1b", num_layers=17)


def test_values_are_seeded_per_name_and_sized_like_trained_weights():
    a = RandomCheckpoint("llama-3.2-1b", seed=3, num_layers=2)
    b = RandomCheckpoint("llama-3.2-1b", seed=3, num_layers=2)
    # Order of requests does not matter: each tensor has its own stream.
    first = a.load("layers.1.k.weight", torch.float32)
    b.load("layers.0.q.weight")
    assert torch.equal(b.load("layers.1.k.weight", torch.float32), first)
    assert not torch.equal(a.load("layers.1.v.weight", torch.float32), first)
    other_seed = RandomCheckpoint("llama-3.2-1b", seed=4, num_layers=2).load("layers.1.k.weight", torch.float32)
    assert not torch.equal(other_seed, first)
    assert first.shape == (512, 2048)
    assert abs(first.std().item() - 0.02) < 0.001 and abs(first.mean().item()) < 0.001
    norm = a.load("layers.0.attn_norm.weight", torch.float32)
    assert abs(norm.mean().item() - 1.0) < 0.005 and norm.std().item() < 0.03
    assert a.load("final_norm.weight").dtype == torch.bfloat16
    assert a.load("layers.0.q.weight", torch.float16).dtype == torch.float16
    with pytest.raises(KilnError, match="has no tensor 'lm_head.weight'"):
        a.load("lm_head.weight")  # tied: the embedding is the head


def test_engine_build_random_weights_of_llama_3_2_1b(tmp_path):
    """The real 1B shape with its first layer only (the full model is too slow for CI)."""
    out = tmp_path / "engine"
    result = CliRunner().invoke(build_main, ["--random-weights", "llama-3.2-1b", "--random-layers", "1",
                                             "--output", str(out), "--dtype", "bfloat16",
                                             "--max-seq-len", "64", "--max-batch-size", "2",
                                             "--max-num-tokens", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "LlamaForCausalLM" in result.stdout and "1 layers, hidden 2048, vocab 128256" in result.stdout
    model = json.loads((out / "config.json").read_text())["model"]
    expected = ModelConfig.from_hf(real_config("llama-3.2-1b")).to_json() | {"num_layers": 1}
    assert model == expected
    assert not (out / "tokenizer").exists()
    engine = load_engine(out)
    assert engine.weights["embed.weight"].shape == (128256, 2048)
    assert "lm_head.weight" not in engine.weights
    assert engine.weights["layers.0.qkv.weight"].shape == (2048 + 2 * 512, 2048)
    # The same name and seed give the same weights.
    ckpt = RandomCheckpoint("llama-3.2-1b", num_layers=1)
    assert torch.equal(engine.weights["layers.0.down.weight"], ckpt.load("layers.0.down.weight"))

    from kiln.runtime import ModelRunner

    with ModelRunner.from_dir(out, device="cpu", max_batch_size=1) as runner:
        ids = runner.generate([[5, 6, 7]], max_new_tokens=3, end_id=-1)[0, 0].tolist()
        assert len(ids) == 6 and ids[:3] == [5, 6, 7]
        with pytest.raises(KilnError, match="the engine has no tokenizer"):
            runner.generate(["text"], max_new_tokens=1)


@pytest.mark.parametrize("args, pattern", [
    ([], "pass exactly one of --checkpoint PATH and --random-weights NAME"),
    (["--random-weights", "llama-3.2-1b", "--checkpoint", "x"], "pass exactly one of"),
    (["--random-weights", "gpt-5"], "unknown model shape 'gpt-5' for --random-weights; choose one "
                                    "of llama-3.1-8b, llama-3.2-1b, qwen2.5-7b, mistral-7b"),
    (["--checkpoint", "x", "--random-layers", "1"], "--random-layers applies to --random-weights only"),
])
def test_random_weights_refusals(tmp_path, args, pattern):
    result = CliRunner().invoke(build_main, args + ["--output", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines


def test_help_lists_the_shapes():
    result = CliRunner().invoke(build_main, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--random-weights NAME" in text and "llama-3.1-8b, llama-3.2-1b, qwen2.5-7b, mistral-7b" in text
    assert "--random-layers" not in text
