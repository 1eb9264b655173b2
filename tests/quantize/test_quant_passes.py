"""The quantize_* passes: a Before graph, the pass, an After graph, structural equality; and
the quantized weights they attach, exactly."""
from __future__ import annotations

import torch

from kiln.builder.ir import Graph, Node, WeightSource
from kiln.builder.models import BuildConfig
from kiln.builder.models.llama import STEP_INPUTS
from kiln.builder.passes import (quantize_fuse_producers, quantize_kv_cache, quantize_linears,
                                 run_pipeline)
from kiln.quantize import pack
from kiln.quantize.calibration import Calibration, LinearQuant

H, I, V = 64, 96, 40
STEP = ["positions", "slot_mapping", "block_tables", "context_lens", "query_start"]


def weight(g: Graph, name: str, *shape: int) -> str:
    seed = sum(map(ord, name))
    return g.add_weight(name, "float32", shape, WeightSource(
        load=lambda dtype: torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype),
        describe=name))


def before() -> Graph:
    """One fused decoder layer's MLP (the form quantization sees) and an LM head."""
    g = Graph()
    for name, (dtype, shape) in STEP_INPUTS.items():
        g.add_value(name, dtype, shape, "input")
    for name, shape in (("embed.weight", (V, H)), ("layers.0.mlp_norm.weight", (H,)),
                        ("layers.0.gate_up.weight", (2 * I, H)), ("layers.0.down.weight", (H, I)),
                        ("final_norm.weight", (H,)), ("lm_head.weight", (V, H))):
        weight(g, name, *shape)
    g.call("embedding", ["input_ids", "embed.weight"], ["embed"])
    g.call("rmsnorm", ["embed", "layers.0.mlp_norm.weight"], ["layers.0.mlp_in"], eps=1e-5)
    g.call("linear", ["layers.0.mlp_in", "layers.0.gate_up.weight"], ["layers.0.gate_up"])
    g.call("silu_mul", ["layers.0.gate_up"], ["layers.0.mlp_act"])
    g.call("linear", ["layers.0.mlp_act", "layers.0.down.weight"], ["layers.0.mlp_out"])
    g.call("add_rmsnorm", ["layers.0.mlp_out", "embed", "final_norm.weight"], ["final", "sum"], eps=1e-5)
    g.call("linear", ["final", "lm_head.weight"], ["logits"])
    g.values["logits"].kind = "output"
    return g


class FixedCalibrator:
    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self.calls = 0

    def calibrate(self, graph, build) -> Calibration:
        self.calls += 1
        return self.calibration


def build_config(quant: str, calibration: Calibration, kv: str = "auto") -> BuildConfig:
    return BuildConfig(dtype="float32", max_batch_size=4, max_seq_len=64, max_num_tokens=16,
                       tokens_per_block=16, targets=[90], quant=quant, kv_cache_dtype=kv,
                       calibrator=FixedCalibrator(calibration))


def node(op, inputs, outputs, **attrs) -> Node:
    return Node(op, inputs, outputs, attrs)


HEAD = [node("embedding", ["input_ids", "embed.weight"], ["embed"])]
TAIL = [node("add_rmsnorm", ["layers.0.mlp_out", "embed", "final_norm.weight"], ["final", "sum"],
             eps=1e-5),
        node("linear", ["final", "lm_head.weight"], ["logits"])]


def structure(nodes: list[Node]) -> list[tuple]:
    g = Graph()
    g.nodes = nodes
    return g.structure()


def test_no_quant_is_a_no_op():
    g = before()
    build = BuildConfig(dtype="float32", max_batch_size=4, max_seq_len=64, max_num_tokens=16)
    for fn in (quantize_linears, quantize_kv_cache, quantize_fuse_producers):
        assert fn(g, build).structure() == g.structure()
    assert quantize_linears(g, build) is g and quantize_kv_cache(g, build) is g


def test_fp8():
    calib = Calibration(linears={
        "layers.0.gate_up.weight": LinearQuant(weight_scale=torch.tensor([0.01]),
                                               input_scale=torch.tensor([0.02])),
        "layers.0.down.weight": LinearQuant(weight_scale=torch.tensor([0.03]),
                                            input_scale=torch.tensor([0.04]))})
    build = build_config("fp8", calib)
    g = before()
    original = g.sources["layers.0.gate_up.weight"].load(torch.float32)
    q = quantize_linears(g, build)
    assert q.structure() == structure(HEAD + [
        node("rmsnorm", ["embed", "layers.0.mlp_norm.weight"], ["layers.0.mlp_in"], eps=1e-5),
        node("quantize_fp8", ["layers.0.mlp_in", "layers.0.gate_up.input_scale"],
             ["layers.0.gate_up.x_fp8"]),
        node("linear_fp8", ["layers.0.gate_up.x_fp8", "layers.0.gate_up.weight",
                            "layers.0.gate_up.input_scale", "layers.0.gate_up.weight_scale"],
             ["layers.0.gate_up"], dtype="float32"),
        node("silu_mul", ["layers.0.gate_up"], ["layers.0.mlp_act"]),
        node("quantize_fp8", ["layers.0.mlp_act", "layers.0.down.input_scale"],
             ["layers.0.mlp_out.x_fp8"]),
        node("linear_fp8", ["layers.0.mlp_out.x_fp8", "layers.0.down.weight",
                            "layers.0.down.input_scale", "layers.0.down.weight_scale"],
             ["layers.0.mlp_out"], dtype="float32")] + TAIL)
    q.verify()
    w = q.values["layers.0.gate_up.weight"]
    assert (w.dtype, w.shape) == ("float8_e4m3fn", (2 * I, H))
    stored = q.sources["layers.0.gate_up.weight"].load(torch.float8_e4m3fn)
    assert torch.equal(stored.float(), pack.to_fp8(original, torch.tensor([0.01])).float())
    assert q.sources["layers.0.down.input_scale"].load(torch.float32).tolist() == [
        torch.tensor(0.04).item()]
    assert g.values["layers.0.gate_up.weight"].dtype == "float32"  # the input graph is untouched

    fused = quantize_fuse_producers(q, build)
    assert fused.structure() == structure(HEAD + [
        node("rmsnorm_quant", ["embed", "layers.0.mlp_norm.weight", "layers.0.gate_up.input_scale"],
             ["layers.0.gate_up.x_fp8"], eps=1e-5, qdtype="float8_e4m3fn"),
        q.nodes[3],
        node("silu_mul_quant", ["layers.0.gate_up", "layers.0.down.input_scale"],
             ["layers.0.mlp_out.x_fp8"], qdtype="float8_e4m3fn"),
        q.nodes[6]] + TAIL)
    fused.verify()


def test_int8_smoothquant_folds_the_smoother_into_the_norm():
    pqs_gu = torch.rand(H, generator=torch.Generator().manual_seed(1)) + 0.5
    pqs_down = torch.rand(I, generator=torch.Generator().manual_seed(2)) + 0.5
    w_gu = torch.randn(2 * I, H, generator=torch.Generator().manual_seed(3))
    calib = Calibration(linears={
        "layers.0.gate_up.weight": LinearQuant(weight_scale=w_gu.abs().amax(1) / 127, group_size=H,
                                               weight=w_gu, pre_quant_scale=pqs_gu),
        "layers.0.down.weight": LinearQuant(weight_scale=torch.full((H,), 0.01), group_size=I,
                                            pre_quant_scale=pqs_down)})
    build = build_config("int8_sq", calib)
    g = before()
    norm = g.sources["layers.0.mlp_norm.weight"].load(torch.float32)
    q = quantize_linears(g, build)
    assert q.structure() == structure(HEAD + [
        node("rmsnorm", ["embed", "layers.0.mlp_norm.smoothed_weight"], ["layers.0.mlp_in"], eps=1e-5),
        node("quantize_int8", ["layers.0.mlp_in"], ["layers.0.gate_up.x_int8", "layers.0.gate_up.x_scale"]),
        node("linear_w8a8", ["layers.0.gate_up.x_int8", "layers.0.gate_up.x_scale",
                             "layers.0.gate_up.weight", "layers.0.gate_up.weight_scale"],
             ["layers.0.gate_up"], dtype="float32"),
        node("silu_mul", ["layers.0.gate_up"], ["layers.0.mlp_act"]),
        node("quantize_int8", ["layers.0.mlp_act", "layers.0.down.pre_quant_scale"],
             ["layers.0.mlp_out.x_int8", "layers.0.mlp_out.x_scale"]),
        node("linear_w8a8", ["layers.0.mlp_out.x_int8", "layers.0.mlp_out.x_scale",
                             "layers.0.down.weight", "layers.0.down.weight_scale"],
             ["layers.0.mlp_out"], dtype="float32")] + TAIL)
    q.verify()
    assert torch.equal(q.sources["layers.0.mlp_norm.smoothed_weight"].load(torch.float32), norm * pqs_gu)
    stored = q.sources["layers.0.gate_up.weight"].load(torch.int8)
    assert torch.equal(stored, pack.quantize_weight(w_gu, 8, (w_gu.abs().amax(1) / 127)[:, None], H))
    assert stored.abs().amax(1).tolist() == [127] * (2 * I)  # per-channel amax maps to 127

    fused = quantize_fuse_producers(q, build)
    assert [n.op for n in fused.nodes] == ["embedding", "rmsnorm_quant", "linear_w8a8",
                                           "silu_mul_quant", "linear_w8a8", "add_rmsnorm", "linear"]
    assert fused.nodes[1].outputs == ["layers.0.gate_up.x_int8", "layers.0.gate_up.x_scale"]
    assert fused.nodes[3].inputs == ["layers.0.gate_up", "layers.0.down.pre_quant_scale"]
    fused.verify()


def test_int4_weight_only_with_offsets_and_pre_quant_scale():
    g = before()
    scales = torch.rand(H, I // 32, generator=torch.Generator().manual_seed(4)) / 10 + 0.01
    offsets = torch.randn(H, I // 32, generator=torch.Generator().manual_seed(5)) / 10
    pqs = torch.rand(I, generator=torch.Generator().manual_seed(6)) + 0.5
    calib = Calibration(linears={
        "layers.0.gate_up.weight": LinearQuant(weight_scale=torch.full((2 * I, 1), 0.1), group_size=64),
        "layers.0.down.weight": LinearQuant(weight_scale=scales, group_size=32,
                                            offsets=offsets, pre_quant_scale=pqs)})
    build = build_config("int4_awq", calib)
    down = g.sources["layers.0.down.weight"].load(torch.float32)
    q = quantize_linears(g, build)
    assert q.structure() == structure(HEAD + [
        node("rmsnorm", ["embed", "layers.0.mlp_norm.weight"], ["layers.0.mlp_in"], eps=1e-5),
        node("linear_wo", ["layers.0.mlp_in", "layers.0.gate_up.weight", "layers.0.gate_up.weight_scale"],
             ["layers.0.gate_up"], bits=4, group_size=64, offset=False, pre_quant_scale=False,
             bias=False),
        node("silu_mul", ["layers.0.gate_up"], ["layers.0.mlp_act"]),
        node("linear_wo", ["layers.0.mlp_act", "layers.0.down.weight", "layers.0.down.weight_scale",
                           "layers.0.down.weight_offset", "layers.0.down.pre_quant_scale"],
             ["layers.0.mlp_out"], bits=4, group_size=32, offset=True, pre_quant_scale=True,
             bias=False)] + TAIL)
    q.verify()
    assert (q.values["layers.0.down.weight"].dtype, q.values["layers.0.down.weight"].shape) == (
        "uint8", (H, I // 2))
    # the offsets are stored in the activation dtype, beside the scales
    offset = q.values["layers.0.down.weight_offset"]
    assert (offset.dtype, offset.shape) == ("float32", (H, I // 32))
    assert torch.equal(q.sources["layers.0.down.weight_offset"].load(torch.float32), offsets)
    assert torch.equal(q.sources["layers.0.down.weight"].load(torch.uint8),
                       pack.quantize_weight(down, 4, scales, 32, offsets))
    assert quantize_fuse_producers(q, build).structure() == q.structure()  # nothing to fuse


def test_kv_cache_pass():
    g = Graph()
    for name, (dtype, shape) in STEP_INPUTS.items():
        g.add_value(name, dtype, shape, "input")
    for name in ("q", "k", "v"):
        g.add_value(name, "float32", ("T", 32), "input")
    attrs = dict(layer=0, num_heads=2, num_kv_heads=2, head_dim=16, scale=0.25, rope=None)
    g.call("attention", ["q", "k", "v", *STEP], ["o"], **attrs)
    g.values["o"].kind = "output"
    calib = Calibration(kv_scales={0: (torch.tensor([0.5]), torch.tensor([0.25]))})
    build = build_config("none", calib, kv="int8")
    q = quantize_kv_cache(g, build)
    assert q.structure() == structure([node("attention", ["q", "k", "v", *STEP, "layers.0.k_scale",
                                                          "layers.0.v_scale"], ["o"],
                                            **attrs, kv_dtype="int8")])
    q.verify()
    assert q.sources["layers.0.v_scale"].load(torch.float32).tolist() == [0.25]
    assert not g.nodes[0].attrs.get("kv_dtype")


def _attention_then_o(kv: str):
    """attention -> o-projection (linear), as a layer has them, and the build quantizing both."""
    g = Graph()
    for name, (dtype, shape) in STEP_INPUTS.items():
        g.add_value(name, dtype, shape, "input")
    for name in ("q", "k", "v"):
        g.add_value(name, "float32", ("T", 32), "input")
    weight(g, "layers.0.o.weight", 32, 32)
    attrs = dict(layer=0, num_heads=2, num_kv_heads=2, head_dim=16, scale=0.25, rope=None)
    g.call("attention", ["q", "k", "v", *STEP], ["layers.0.attn"], **attrs)
    g.call("linear", ["layers.0.attn", "layers.0.o.weight"], ["o"])
    g.values["o"].kind = "output"
    calib = Calibration(linears={"layers.0.o.weight": LinearQuant(
        weight_scale=torch.tensor([0.01]), input_scale=torch.tensor([0.02]))},
        kv_scales={0: (torch.tensor([0.5]), torch.tensor([0.25]))})
    build = build_config("fp8", calib, kv=kv)
    return quantize_kv_cache(quantize_linears(g, build), build), build, attrs


def test_fp8_attention_output_quantized_by_attention():
    """The o-projection's FP8 quantization folds into the attention op: the scale its last
    input, the e4m3 output its second (the unquantized output stays the first)."""
    for kv in ("auto", "fp8"):
        q, build, attrs = _attention_then_o(kv)
        kv_in = ["layers.0.k_scale", "layers.0.v_scale"] if kv == "fp8" else []
        kv_attr = {"kv_dtype": "float8_e4m3fn"} if kv == "fp8" else {}
        fused = quantize_fuse_producers(q, build)
        assert fused.structure() == structure([
            node("attention", ["q", "k", "v", *STEP, *kv_in, "layers.0.o.input_scale"],
                 ["layers.0.attn", "o.x_fp8"], **attrs, **kv_attr,
                 out_qdtype="float8_e4m3fn"),
            node("linear_fp8", ["o.x_fp8", "layers.0.o.weight", "layers.0.o.input_scale",
                                "layers.0.o.weight_scale"], ["o"], dtype="float32")])
        fused.verify()
        assert fused.values["o.x_fp8"].dtype == "float8_e4m3fn"


def test_attention_output_read_elsewhere_is_quantized_apart():
    q, build, _ = _attention_then_o("auto")
    q.values["layers.0.attn"].kind = "output"  # a second reader: the step's output
    assert quantize_fuse_producers(q, build).structure() == q.structure()


def test_the_whole_pipeline_quantizes():
    calib = Calibration(
        linears={"layers.0.gate_up.weight": LinearQuant(weight_scale=torch.tensor([0.01]),
                                                        input_scale=torch.tensor([0.02])),
                 "layers.0.down.weight": LinearQuant(weight_scale=torch.tensor([0.03]),
                                                     input_scale=torch.tensor([0.04]))})
    build = build_config("fp8", calib)
    plan = run_pipeline(before(), build)
    # The down projection adds the residual itself (fold_residual_into_linears).
    assert plan.ops() == ["embedding", "rmsnorm_quant", "linear_fp8", "silu_mul_quant",
                          "linear_fp8", "rmsnorm", "linear"]
    assert plan.nodes[4].attrs.get("residual")
    assert build.calibrator.calls == 1
    assert "layers.0.mlp_in" not in plan.values and plan.memory_plan is not None
