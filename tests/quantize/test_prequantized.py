"""Pre-quantized checkpoints: AutoAWQ / GPTQ INT4 and modelopt FP8 exports build into engines
that keep their quantized values; unrecognised formats are refused with one line."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kiln.builder.build import build_engine
from kiln.builder.checkpoint import open_checkpoint
from kiln.builder.engine import load_engine
from kiln.builder.errors import KilnError
from kiln.builder.models import BuildConfig
from kiln.quantize import pack
from kiln.runtime.reference import ReferenceBackend
from kiln_testing import PagedSequences, make_tiny_checkpoint
from prequant import write_int4_checkpoint

SMALL = dict(dtype="float32", max_batch_size=32, max_seq_len=128, max_num_tokens=64,
             tokens_per_block=4)
PROMPTS = [list(range(5, 30)), list(range(40, 52))]


def all_logits(engine_dir) -> torch.Tensor:
    engine = load_engine(engine_dir)
    b = engine.config.build
    seqs = PagedSequences(b.tokens_per_block, b.max_blocks_per_seq, 32)
    for p in PROMPTS:
        seqs.add(p)
    step = seqs.step([(i, len(p)) for i, p in enumerate(PROMPTS)])
    step["last_token_index"] = np.arange(sum(map(len, PROMPTS)), dtype=np.int32)
    return torch.from_numpy(ReferenceBackend(engine, 32).forward(step))


@pytest.mark.parametrize("method, symmetric, quant", [("awq", False, "int4_awq"),
                                                      ("gptq", True, "int4_gptq"),
                                                      ("gptq", False, "int4_gptq")])
def test_int4_checkpoints_keep_their_values(tmp_path, method, symmetric, quant):
    pre, dequantized = write_int4_checkpoint("qwen2", tmp_path, method, group=32, symmetric=symmetric)
    with open_checkpoint(pre) as ckpt:
        assert (ckpt.prequantized.quant, ckpt.meta("layers.1.down.weight")[0]) == (quant, (64, 128))
        reference = load_file(str(dequantized / "model.safetensors"))
        assert torch.equal(ckpt.load("layers.1.down.weight", torch.float32),
                           reference["model.layers.1.mlp.down_proj.weight"])
    report = build_engine(pre, tmp_path / "engine", BuildConfig(**SMALL), progress=False)
    assert (report.build.quant, report.build.kv_cache_dtype) == (quant, "auto")
    build_engine(dequantized, tmp_path / "float", BuildConfig(**SMALL), progress=False)
    # same dequantized weights, so the same logits, exactly
    assert torch.equal(all_logits(tmp_path / "engine"), all_logits(tmp_path / "float"))
    engine = load_engine(tmp_path / "engine")
    o = next(n for n in engine.graph.nodes if n.op == "linear_wo" and n.inputs[1] == "layers.0.o.weight")
    assert o.attrs == {"bits": 4, "group_size": 32, "offset": not symmetric,
                       "pre_quant_scale": False, "bias": False}
    # the engine holds the checkpoint's own nibbles and scales, its zero points as float
    # offsets (8 - zero) * scale
    raw = load_file(str(pre / "model.safetensors"))
    scales = raw["model.layers.0.self_attn.o_proj.scales"].float().T
    assert torch.equal(engine.weights["layers.0.o.weight_scale"], scales)
    w = reference["model.layers.0.self_attn.o_proj.weight"]
    if symmetric:
        assert "layers.0.o.weight_offset" not in engine.weights
        expected = pack.quantize_weight(w, 4, scales, 32)
    else:
        offsets = engine.weights["layers.0.o.weight_offset"]
        with open_checkpoint(pre) as ckpt:
            zeros = ckpt.prequantized._int4("layers.0.o")[2]
        assert torch.equal(offsets, pack.offsets_from_zeros(zeros, scales))
        expected = pack.quantize_weight(w, 4, scales, 32, offsets)
        assert torch.equal(pack.dequantize_weight(expected, 4, scales, 32, offsets), w)
    assert torch.equal(engine.weights["layers.0.o.weight"], expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_int4_zero_points_in_a_16_bit_engine(tmp_path, dtype):
    """A 16-bit engine stores scales and offsets (8 - zero) * scale in the activation dtype,
    each rounded once: the nibbles are the checkpoint's, and each weight is off by at most
    |u - 8| times its scale's rounding plus its offset's (float16 keeps the checkpoint's
    scales exactly, so only the offset's half unit in the last place remains)."""
    pre, dequantized = write_int4_checkpoint("llama", tmp_path, "awq", group=32)
    build_engine(pre, tmp_path / "engine", BuildConfig(**dict(SMALL, dtype=dtype)),
                 progress=False)
    engine = load_engine(tmp_path / "engine")
    reference = load_file(str(dequantized / "model.safetensors"))
    raw = load_file(str(pre / "model.safetensors"))
    act = getattr(torch, dtype)
    for part, hf in (("o", "self_attn.o_proj"), ("down", "mlp.down_proj")):
        exact_scales = raw[f"model.layers.1.{hf}.scales"].T.float()
        scales = engine.weights[f"layers.1.{part}.weight_scale"]
        offsets = engine.weights[f"layers.1.{part}.weight_offset"]
        assert scales.dtype == offsets.dtype == act
        assert torch.equal(scales, exact_scales.to(act))
        with open_checkpoint(pre) as ckpt:
            zeros = ckpt.prequantized._int4(f"layers.1.{part}")[2]
        exact = pack.offsets_from_zeros(zeros, exact_scales)
        assert torch.equal(offsets, exact.to(act))
        nibbles = engine.weights[f"layers.1.{part}.weight"]
        w = reference[f"model.layers.1.{hf}.weight"]
        assert torch.equal(nibbles, pack.quantize_weight(w, 4, exact_scales, 32, exact))
        got = pack.dequantize_weight(nibbles, 4, scales, 32, offsets)
        bound = (8 * (scales.float() - exact_scales).abs()
                 + (offsets.float() - exact).abs()).repeat_interleave(32, 1)
        assert bool(((got - w).abs() <= bound * (1 + 1e-6)).all())
        if dtype == "float16":
            assert torch.equal(scales.float(), exact_scales)


def test_modelopt_fp8_export(tmp_path):
    mtq = pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    from modelopt.torch.export import export_hf_checkpoint
    import transformers

    src = make_tiny_checkpoint("llama", tmp_path / "src")
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    cfg["quant_cfg"] += mtq.FP8_KV_CFG["quant_cfg"]
    calib = torch.randint(3, 320, (4, 32), generator=torch.Generator().manual_seed(0))
    mtq.quantize(model, cfg, forward_loop=lambda m: m(calib))
    # The engine's fused q/k/v and gate/up GEMMs share the largest of their weight scales;
    # give the fake-quantized model the same, so that the two compute the same thing.
    for layer in model.model.layers:
        for group in ((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                      (layer.mlp.gate_proj, layer.mlp.up_proj)):
            shared = max(lin.weight_quantizer.amax for lin in group)
            for lin in group:
                lin.weight_quantizer.amax = shared.clone()
    tokens = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        fake = model(tokens).logits[0]
    export_hf_checkpoint(model, export_dir=tmp_path / "fp8")
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, tmp_path / "fp8" / f.name)

    report = build_engine(tmp_path / "fp8", tmp_path / "engine",
                          BuildConfig(**SMALL, targets=[89, 90]), progress=False)
    assert (report.build.quant, report.build.kv_cache_dtype) == ("fp8", "fp8")
    engine = load_engine(tmp_path / "engine")
    b = engine.config.build
    seqs = PagedSequences(b.tokens_per_block, b.max_blocks_per_seq, 32)
    seqs.add(PROMPTS[0])
    step = seqs.step([(0, len(PROMPTS[0]))])
    step["last_token_index"] = np.arange(len(PROMPTS[0]), dtype=np.int32)
    ours = torch.from_numpy(ReferenceBackend(engine, 32).forward(step))
    assert (ours - fake).abs().max() <= 1e-3 * fake.abs().max()
    with safe_open(str(tmp_path / "fp8" / "model.safetensors"), "pt") as f:
        o = f.get_tensor("model.layers.1.self_attn.o_proj.weight")
        k_scale = f.get_tensor("model.layers.1.self_attn.k_proj.k_scale")
    assert torch.equal(engine.weights["layers.1.o.weight"].view(torch.uint8), o.view(torch.uint8))
    assert torch.equal(engine.weights["layers.1.k_scale"], k_scale.reshape(1))


def quantized_config(tmp_path, quant_config: dict | None, extra_file: dict | None = None):
    src = make_tiny_checkpoint("llama", tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    if quant_config is not None:
        config["quantization_config"] = quant_config
    (src / "config.json").write_text(json.dumps(config))
    if extra_file is not None:
        (src / "hf_quant_config.json").write_text(json.dumps(extra_file))
    return src


@pytest.mark.parametrize("quant_config, message", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True},
     r"pre-quantized checkpoint \(bitsandbytes\), a format Kiln does not read; Kiln reads "
     r"modelopt FP8 exports and AutoAWQ \(GEMM\) / GPTQ 4-bit checkpoints"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"},
     r"\(awq\) in the gemv layout; Kiln reads AutoAWQ's GEMM layout"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True},
     r"\(gptq\) with act-order \(desc_act\)"),
    ({"quant_method": "gptq", "bits": 8, "group_size": 128},
     r"\(gptq\) with bits 8 and group_size 128; Kiln reads 4-bit checkpoints"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"},
     r"\(modelopt\) with quant_algo NVFP4 and KV cache None, which Kiln does not read"),
    ({"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm"},
     r"pre-quantized checkpoint \(awq\) but lacks layers.0.q.qweight; re-download it"),
])
def test_unrecognised_formats_are_refused(tmp_path, quant_config, message):
    src = quantized_config(tmp_path, quant_config)
    with pytest.raises(KilnError, match=message):
        open_checkpoint(src)


def test_modelopt_quant_config_file_alone_is_recognised(tmp_path):
    src = quantized_config(tmp_path, None, {"producer": {"name": "modelopt"},
                                            "quantization": {"quant_algo": "W4A8_AWQ"}})
    with pytest.raises(KilnError, match=r"\(modelopt\) with quant_algo W4A8_AWQ"):
        open_checkpoint(src)


def test_build_settings_must_fit_the_checkpoint(tmp_path):
    pre, _ = write_int4_checkpoint("llama", tmp_path, "awq", group=32)
    with pytest.raises(KilnError, match=r"^the checkpoint is pre-quantized as int4_awq \(awq\); "
                                        r"build it with --quant int4_awq or leave --quant out$"):
        build_engine(pre, tmp_path / "e1", BuildConfig(**SMALL, quant="int8_sq"), progress=False)
    with pytest.raises(KilnError, match=r"^--kv-cache-dtype int8 does not fit the checkpoint, "
                                        r"which has no KV cache scales"):
        build_engine(pre, tmp_path / "e2", BuildConfig(**SMALL, kv_cache_dtype="int8"),
                     progress=False)


def test_act_order_gptq_is_refused_at_build(tmp_path):
    pre, _ = write_int4_checkpoint("llama", tmp_path, "gptq", group=32, symmetric=True)
    tensors = load_file(str(pre / "model.safetensors"))
    g_idx = tensors["model.layers.0.self_attn.q_proj.g_idx"]
    tensors["model.layers.0.self_attn.q_proj.g_idx"] = g_idx.flip(0).contiguous()
    save_file(tensors, str(pre / "model.safetensors"))
    with pytest.raises(KilnError, match=r"g_idx is not in order \(act-order GPTQ\)"):
        build_engine(pre, tmp_path / "e", BuildConfig(**SMALL), progress=False)


@pytest.mark.parametrize("arch", ["granite", "ernie4_5"])
def test_prequantized_weights_kiln_would_lay_out_anew_are_refused(tmp_path, arch):
    """Granite's o/down weights are read times residual_multiplier and ERNIE 4.5's q/k rows
    permuted for its interleaved RoPE: a checkpoint's own int4 scales would no longer fit."""
    pre, _ = write_int4_checkpoint(arch, tmp_path, "awq", group=32)
    with pytest.raises(KilnError, match=r"a pre-quantized checkpoint of a model whose q/k or "
                                        r"o/down weights Kiln lays out anew"):
        build_engine(pre, tmp_path / "e", BuildConfig(**SMALL), progress=False)
