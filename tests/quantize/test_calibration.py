"""Each quantized engine agrees with modelopt's fake-quantized model of it.

The calibrator keeps the module modelopt calibrated (the plan's GEMMs as nn.Linear, modelopt's
quantizers inserted); its forward is modelopt's fake quantization. The engine, built from the
same calibration, runs its quantized ops on the CPU reference backend. Logits of every token
must agree within 1e-3 of the largest logit (observed: a few 1e-6).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed")

from kiln.builder.build import build_engine  # noqa: E402
from kiln.builder.errors import KilnError  # noqa: E402
from kiln.builder.engine import load_engine  # noqa: E402
from kiln.builder.models import BuildConfig  # noqa: E402
from kiln.quantize.calibrate import ModeloptCalibrator, modelopt_config  # noqa: E402
from kiln.quantize.mode import quant_mode  # noqa: E402
from kiln.runtime.reference import ReferenceBackend  # noqa: E402
from kiln_testing import make_tiny_checkpoint  # noqa: E402

TOLERANCE = 1e-3
WEIGHT_DTYPE = {"fp8": "float8_e4m3fn", "int8_sq": "int8", "int8_wo": "int8", "int4_awq": "uint8",
                "int4_gptq": "uint8"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    return {arch: make_tiny_checkpoint(arch, root / arch, seed=i)
            for i, arch in enumerate(["llama", "qwen2", "phi3-longrope", "gemma3", "gemma2",
                                      "olmo2", "cohere2", "starcoder2"])}


def engine_logits(engine, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of every token of each row of `tokens`, each row a sequence."""
    b = engine.config.build
    rows, length = tokens.shape
    blocks = length // b.tokens_per_block
    backend = ReferenceBackend(engine, rows * blocks)
    table = np.zeros((rows, b.max_blocks_per_seq), dtype=np.int32)
    table[:, :blocks] = np.arange(rows * blocks).reshape(rows, blocks)
    step = {"input_ids": tokens.reshape(-1).numpy().astype(np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), rows),
            "slot_mapping": np.arange(rows * length, dtype=np.int64),
            "block_tables": table,
            "context_lens": np.full(rows, length, dtype=np.int32),
            "query_start": (np.arange(rows + 1) * length).astype(np.int32),
            "last_token_index": np.arange(rows * length, dtype=np.int32)}
    return torch.from_numpy(backend.forward(step))


def build(ckpt, out, quant: str, kv: str = "auto", seed: int = 0, group_size: int | None = None):
    calibration = torch.randint(3, 320, (6, 32), generator=torch.Generator().manual_seed(seed))
    calibrator = ModeloptCalibrator(calibration, device="cpu")
    config = BuildConfig(dtype="float32", max_batch_size=64, max_seq_len=128, max_num_tokens=64,
                         tokens_per_block=8, targets=[89, 90], quant=quant, kv_cache_dtype=kv,
                         quant_group_size=group_size, calibrator=calibrator)
    report = build_engine(ckpt, out, config, progress=False)
    return load_engine(out), calibrator, report


def assert_agrees_with_modelopt(engine, calibrator, seed: int = 1) -> float:
    tokens = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(seed))
    ours = engine_logits(engine, tokens)
    with torch.no_grad():
        fake = calibrator.module(tokens, all_logits=True).cpu()
    diff = (ours - fake).abs().max().item()
    assert diff <= TOLERANCE * fake.abs().max().item(), diff
    return diff


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("quant", list(WEIGHT_DTYPE))
def test_engine_agrees_with_modelopt_fake_quant(checkpoints, tmp_path, arch, quant):
    engine, calibrator, report = build(checkpoints[arch], tmp_path / "e", quant)
    assert_agrees_with_modelopt(engine, calibrator)
    config = json.loads((tmp_path / "e" / "config.json").read_text())["build"]
    assert (config["quant"], config["kv_cache_dtype"], config["quant_mode"]) == (
        quant, "auto", int(quant_mode(quant, "auto")))
    w = engine.weights["layers.0.qkv.weight"]
    assert str(w.dtype).removeprefix("torch.") == WEIGHT_DTYPE[quant]
    assert report.num_kernels > 0  # the GPU program, for both targets
    ops = set(engine.graph.ops())
    # FP8: every residual add inside the o and down GEMMs (fold_residual_into_linears); the
    # int8 SmoothQuant GEMMs keep theirs in the norm.
    expected = {"fp8": {"linear_fp8", "rmsnorm_quant", "silu_mul_quant"},
                "int8_sq": {"linear_w8a8", "rmsnorm_quant", "add_rmsnorm_quant", "silu_mul_quant"}}
    assert expected.get(quant, {"linear_wo"}) <= ops
    if quant == "fp8":
        assert "add_rmsnorm_quant" not in ops
        assert sum(1 for n in engine.graph.nodes if n.op == "linear_fp8"
                   and n.attrs.get("residual")) == 2 * engine.config.model.num_layers
    assert "linear" in ops  # the LM head stays unquantized


@pytest.mark.parametrize("arch, quant", [("phi3-longrope", "fp8"), ("phi3-longrope", "int4_awq"),
                                         ("gemma3", "fp8"), ("gemma3", "int8_sq"),
                                         ("gemma3", "int4_awq"), ("gemma2", "fp8"),
                                         ("olmo2", "int8_sq"), ("cohere2", "int8_sq"),
                                         ("cohere2", "int4_awq"), ("starcoder2", "fp8"),
                                         ("starcoder2", "int4_awq")])
def test_other_families_agree_with_modelopt_fake_quant(checkpoints, tmp_path, arch, quant):
    """q and k read permuted and scaled for partial RoPE and LongRoPE (models/llama.py), and
    Gemma's norms (1 + w), scaled embeddings and GELU-tanh MLP (whose output is quantized on
    its own, not inside the activation's kernel), are what calibration sees and what the
    engine quantizes."""
    engine, calibrator, _ = build(checkpoints[arch], tmp_path / "e", quant)
    assert_agrees_with_modelopt(engine, calibrator)


@pytest.mark.parametrize("quant, kv", [("none", "fp8"), ("none", "int8"), ("fp8", "fp8"),
                                       ("int4_awq", "int8")])
def test_quantized_kv_cache_agrees_with_modelopt(checkpoints, tmp_path, quant, kv):
    engine, calibrator, _ = build(checkpoints["llama"], tmp_path / "e", quant, kv)
    assert_agrees_with_modelopt(engine, calibrator)
    attn = [n for n in engine.graph.nodes if n.op == "attention"]
    assert all(n.attrs["kv_dtype"] == {"fp8": "float8_e4m3fn", "int8": "int8"}[kv] for n in attn)
    backend = ReferenceBackend(engine, 4)
    assert backend.kv_cache.dtype == {"fp8": torch.float8_e4m3fn, "int8": torch.int8}[kv]
    k_scale = engine.weights["layers.1.k_scale"]
    amax = calibrator.module.kv["1"].k_bmm_quantizer.amax
    assert torch.allclose(k_scale, amax.reshape(1) / (448.0 if kv == "fp8" else 127.0))


@pytest.mark.parametrize("quant", ["int4_awq", "int4_gptq"])
@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_group_size(checkpoints, tmp_path, quant, group_size):
    """--quant-group-size sets every int4 GEMM's group (modelopt's block size, the packed scales,
    the linear_wo attr) and is recorded in config.json; the engine still agrees with modelopt."""
    engine, calibrator, _ = build(checkpoints["llama"], tmp_path / "e", quant,
                                  group_size=group_size)
    assert_agrees_with_modelopt(engine, calibrator)
    config = json.loads((tmp_path / "e" / "config.json").read_text())["build"]
    assert config["quant_group_size"] == group_size
    wo = [n for n in engine.graph.nodes if n.op == "linear_wo"]
    assert len(wo) == 8 and {n.attrs["group_size"] for n in wo} == {group_size}
    for node in wo:
        n, k = (engine.graph.values[v].shape[-1] for v in (node.outputs[0], node.inputs[0]))
        assert engine.weights[node.inputs[2]].shape == (n, k // group_size)
        lin = calibrator.module.linear(node.inputs[1])
        assert lin.weight_quantizer.block_sizes[-1] == group_size


def test_group_size_must_divide_k(checkpoints, tmp_path):
    with pytest.raises(KilnError, match=r"^--quant-group-size 128 does not divide K=64 of "
                                        r"layers\.0\.qkv\.weight; use 64 or 32 for this model$"):
        build(checkpoints["llama"], tmp_path / "e", "int4_awq", group_size=128)
    assert not (tmp_path / "e").exists()


def test_group_size_defaults_to_the_checkpoints_blocks():
    from kiln.quantize.calibrate import group_size_for

    assert group_size_for("w", 576) == 64
    assert group_size_for("w", 576, native=32) == 32  # a Q4_1 GGUF
    assert group_size_for("w", 1536, native=256) == 128  # K-quants' super-blocks: not a group
    assert group_size_for("w", 576, requested=64, native=32) == 64
    assert group_size_for("w", 96, native=64) == 32  # 64 does not divide K


def test_modelopt_recipes():
    cfg = modelopt_config("int8_sq", "fp8", {})
    assert cfg["algorithm"] == {"method": "smoothquant", "alpha": 0.5}
    assert {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}} \
        in cfg["quant_cfg"]
    cfg = modelopt_config("int4_gptq", "auto", {"layers_0_qkv_weight": 64})
    assert cfg["algorithm"] == {"method": "gptq"}
    assert cfg["quant_cfg"][-1] == {
        "quantizer_name": "linears.layers_0_qkv_weight.weight_quantizer",
        "cfg": {"num_bits": 4, "block_sizes": {-1: 64, "type": "static"},
                "backend": "kiln_int4_min_max"}}
    assert modelopt_config("int4_awq", "auto", {})["algorithm"] == {
        "method": "awq_lite", "alpha_step": 0.1, "debug": True}


def test_awq_smoothing_reaches_the_engine(checkpoints, tmp_path):
    """AWQ's per-channel scales are folded into the norms (qkv, gate_up) or kept as the GEMM's
    pre_quant_scale input (o, down), and are not all ones."""
    engine, calibrator, _ = build(checkpoints["llama"], tmp_path / "e", "int4_awq")
    wo = {n.inputs[1]: n for n in engine.graph.nodes if n.op == "linear_wo"}
    assert wo["layers.0.o.weight"].attrs["pre_quant_scale"]
    assert not wo["layers.0.qkv.weight"].attrs["pre_quant_scale"]
    assert "layers.0.attn_norm.smoothed_weight" in engine.weights
    pqs = engine.weights["layers.0.o.pre_quant_scale"]
    assert pqs.shape == (64,) and (pqs - 1).abs().max() > 1e-3


@pytest.fixture(scope="module")
def q4_1_checkpoint(tmp_path_factory):
    """A tiny llama whose decoder weights are GGUF Q4_1's: per group of 32 input channels
    d * q + m, d and m float16 and q in 0..15, 0 and 15 in each group."""
    from safetensors.torch import load_file, save_file

    path = make_tiny_checkpoint("llama", tmp_path_factory.mktemp("q4_1") / "llama", seed=3)
    tensors = load_file(str(path / "model.safetensors"))
    for name, w in tensors.items():
        if ".layers." in name and name.endswith("proj.weight"):
            grouped = w.float().reshape(w.shape[0], -1, 32)
            m = grouped.amin(-1, keepdim=True).half().float()
            d = ((grouped.amax(-1, keepdim=True) - m) / 15).half().float()
            q = torch.round((grouped - m) / d).clamp(0, 15)
            q[..., 0], q[..., 1] = 0, 15
            tensors[name] = (d * q + m).reshape(w.shape)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("quant", ["int4_awq", "int4_gptq"])
def test_int4_gives_back_a_q4_1_weight(q4_1_checkpoint, tmp_path, quant):
    """Groups of 32 with a float offset are Q4_1's own: AWQ keeps every weight unscaled (its
    scaled candidates all lose more), GPTQ has no error to spread, and each engine weight
    dequantizes to the checkpoint's exactly."""
    from kiln.builder.checkpoint import open_checkpoint
    from kiln.quantize import pack

    engine, calibrator, _ = build(q4_1_checkpoint, tmp_path / "e", quant, group_size=32)
    assert_agrees_with_modelopt(engine, calibrator)
    wo = [n for n in engine.graph.nodes if n.op == "linear_wo"]
    assert len(wo) == 8 and all(n.attrs["offset"] and not n.attrs["pre_quant_scale"]
                                for n in wo)
    if quant == "int4_awq":
        assert len(calibrator.unscaled) == 8
    parts = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
    with open_checkpoint(q4_1_checkpoint) as ckpt:
        for node in wo:
            prefix, kind = node.inputs[1].rsplit(".", 2)[:2]
            original = torch.cat([ckpt.load(f"{prefix}.{p}.weight", torch.float32)
                                  for p in parts.get(kind, (kind,))])
            w, scales, offsets = (engine.weights[v] for v in node.inputs[1:4])
            got = pack.dequantize_weight(w, 4, scales, 32, offsets)
            assert torch.equal(got, original), node.inputs[1]


def test_fake_quant_takes_the_torch_path():
    """No CUDA extension is compiled for calibration: modelopt's fake quantizers run their torch
    path (the CPU's) on the GPU too. FP8: the e4m3 codes of x * (448 / amax), times the
    reciprocal of that factor; integers: rounded and clamped codes of x * (bound / amax)."""
    import modelopt.torch.quantization.tensor_quant as tq
    from modelopt.torch.quantization import extensions

    from kiln.quantize.calibrate import import_modelopt

    import_modelopt()
    assert extensions.get_cuda_ext_fp8() is None and extensions.get_cuda_ext() is None
    x, amax = torch.randn(4, 64) * 3, torch.tensor(5.0)
    factor = 127 / amax
    expect = torch.round(x * factor).clamp(-127, 127) / factor
    assert torch.equal(tq.fake_tensor_quant(x, amax, None, 8), expect)
    x, amax = torch.randn(4, 64) * 3, torch.tensor(5.0)
    factor = 448 / amax
    expect = (x * factor).clamp(-448, 448).to(torch.float8_e4m3fn).float() * (1 / factor)
    assert torch.equal(tq.scaled_e4m3_impl(x, amax), expect)
