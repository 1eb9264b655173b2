"""Each pass: a Before graph, the pass, an After graph, structural equality."""
from __future__ import annotations

import pytest
import torch

from graphs import HD, I, NKV, NQ, ROPE, STEP, H, V, attention_attrs, inputs, weight
from kiln.builder.ir import Graph
from kiln.builder.models import BuildConfig
from kiln.builder.passes import (PIPELINE, drop_dead_values, fold_into_linears,
                                 fold_rope_into_attention, fuse_add_rmsnorm, fuse_gate_up,
                                 fuse_qkv, gather_last_tokens, plan_memory, run_pipeline)


def base(with_bias: bool = False) -> Graph:
    g = Graph()
    inputs(g)
    weight(g, "embed.weight", V, H)
    g.call("embedding", ["input_ids", "embed.weight"], ["x"])
    return g


def test_fuse_qkv():
    before = base()
    for part, rows in (("q", NQ * HD), ("k", NKV * HD), ("v", NKV * HD)):
        weight(before, f"l.{part}.weight", rows, H)
        weight(before, f"l.{part}.bias", rows)
        before.call("linear", ["x", f"l.{part}.weight", f"l.{part}.bias"], [f"l.{part}"])
    after = fuse_qkv(before)

    expect = base()
    expect.nodes += [
        type(expect.nodes[0])("linear", ["x", "l.qkv.weight", "l.qkv.bias"], ["l.qkv"]),
        type(expect.nodes[0])("split", ["l.qkv"], ["l.q", "l.k", "l.v"], {"sizes": [16, 8, 8]}),
    ]
    assert after.structure() == expect.structure()
    assert after.values["l.qkv.weight"].shape == (32, H)
    fused = after.sources["l.qkv.weight"].load(torch.float32)
    parts = [before.sources[f"l.{p}.weight"].load(torch.float32) for p in "qkv"]
    assert torch.equal(fused, torch.cat(parts))
    assert torch.equal(after.sources["l.qkv.bias"].load(torch.float32),
                       torch.cat([before.sources[f"l.{p}.bias"].load(torch.float32) for p in "qkv"]))


def test_fuse_qkv_leaves_other_linears():
    g = base()
    weight(g, "l.q.weight", 16, H)
    weight(g, "l.k.weight", 8, H)
    g.call("linear", ["x", "l.q.weight"], ["a"])
    g.call("linear", ["x", "l.k.weight"], ["b"])
    assert fuse_qkv(g).structure() == g.structure()


def gate_up_mlp():
    """x's gate and up linears, SiLU of the gate times the up, unfused."""
    g = base()
    weight(g, "l.gate.weight", I, H)
    weight(g, "l.up.weight", I, H)
    g.call("linear", ["x", "l.gate.weight"], ["g"])
    g.call("linear", ["x", "l.up.weight"], ["u"])
    g.call("silu", ["g"], ["s"])
    g.call("mul", ["s", "u"], ["m"])
    return g


def test_fuse_gate_up():
    before = gate_up_mlp()
    after = fuse_gate_up(before)
    assert [(n.op, n.inputs, n.outputs) for n in after.nodes[1:]] == [
        ("linear", ["x", "l.gate_up.weight"], ["l.gate_up"]),
        ("silu_mul", ["l.gate_up"], ["m"]),
    ]
    w = after.sources["l.gate_up.weight"].load(torch.float32)
    assert torch.equal(w, torch.cat([before.sources["l.gate.weight"].load(torch.float32),
                                     before.sources["l.up.weight"].load(torch.float32)]))


@pytest.mark.parametrize("dtype,quant,pairs", [("bfloat16", "none", True),
                                               ("float16", "none", True),
                                               ("float32", "none", False),
                                               ("bfloat16", "fp8", False)])
def test_fuse_gate_up_pairs_rows_in_16_bit_unquantized_builds(dtype, quant, pairs):
    """A 16-bit build with unquantized linears takes the gate and up rows in turn and marks the
    SiLU-mul `pairs`; whichever layout, the SiLU-mul's reference gives the unfused result."""
    before = gate_up_mlp()
    after = fuse_gate_up(before, BuildConfig(dtype=dtype, quant=quant, targets=(90,)))
    act = after.nodes[-1]
    assert act.op == "silu_mul" and bool(act.attrs.get("pairs")) is pairs
    gate, up = (before.sources[f"l.{p}.weight"].load(torch.float32) for p in ("gate", "up"))
    w = after.sources["l.gate_up.weight"].load(torch.float32)
    if pairs:
        assert torch.equal(w[0::2], gate) and torch.equal(w[1::2], up)
    else:
        assert torch.equal(w, torch.cat([gate, up]))
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(0))
    from kiln.builder.ops.elementwise import _silu_mul
    fused = _silu_mul(act, [x @ w.T], None)[0]
    assert torch.allclose(fused, torch.nn.functional.silu(x @ gate.T) * (x @ up.T), atol=1e-6)


def test_fold_rope_into_attention():
    before = base()
    for part, rows in (("q", NQ * HD), ("k", NKV * HD), ("v", NKV * HD)):
        weight(before, f"{part}.weight", rows, H)
        before.call("linear", ["x", f"{part}.weight"], [part])
    before.call("rope", ["q", "positions"], ["q_rot"], **ROPE)
    before.call("rope", ["k", "positions"], ["k_rot"], **ROPE)
    before.call("attention", ["q_rot", "k_rot", "v", *STEP], ["a"], **attention_attrs())
    after = fold_rope_into_attention(before)
    assert after.ops() == ["embedding", "linear", "linear", "linear", "attention"]
    attn = after.nodes[-1]
    assert attn.inputs[:3] == ["q", "k", "v"] and attn.attrs["rope"] == ROPE


def test_gather_last_tokens_moves_through_row_wise_ops():
    before = base()
    weight(before, "norm.weight", H)
    weight(before, "head.weight", V, H)
    before.call("rmsnorm", ["x", "norm.weight"], ["n"], eps=1e-5)
    before.call("linear", ["n", "head.weight"], ["logits_all"])
    before.call("gather_last", ["logits_all", "last_token_index"], ["last"])
    before.call("cast", ["last"], ["logits"], dtype="float32")
    after = gather_last_tokens(before)
    assert [(n.op, n.inputs, n.outputs) for n in after.nodes[1:]] == [
        ("gather_last", ["x", "last_token_index"], ["x.last"]),
        ("rmsnorm", ["x.last", "norm.weight"], ["n.last"]),
        ("linear", ["n.last", "head.weight"], ["last"]),
        ("cast", ["last"], ["logits"]),
    ]
    assert after.values["n.last"].shape == ("B", H) and "n" not in after.values


def test_gather_last_tokens_gathers_both_add_operands_and_stops_at_shared_values():
    before = base()
    weight(before, "w.weight", H, H)
    before.call("linear", ["x", "w.weight"], ["y"])
    before.call("add", ["x", "y"], ["s"])
    before.call("gather_last", ["s", "last_token_index"], ["out"])
    after = gather_last_tokens(before)
    # x feeds both the linear and the add, so its gather stops there; y's moves through.
    assert [(n.op, n.inputs, n.outputs) for n in after.nodes[1:]] == [
        ("gather_last", ["x", "last_token_index"], ["x.last"]),
        ("linear", ["x.last", "w.weight"], ["y.last"]),
        ("add", ["x.last", "y.last"], ["out"]),
    ]


def test_fuse_add_rmsnorm():
    before = base()
    weight(before, "w.weight", H, H)
    weight(before, "norm.weight", H)
    before.call("linear", ["x", "w.weight"], ["y"])
    before.call("add", ["x", "y"], ["h"])
    before.call("rmsnorm", ["h", "norm.weight"], ["n"], eps=1e-6)
    before.call("add", ["h", "n"], ["out"])
    after = fuse_add_rmsnorm(before)
    assert [(n.op, n.inputs, n.outputs, n.attrs) for n in after.nodes[2:]] == [
        ("add_rmsnorm", ["y", "x", "norm.weight"], ["n", "h"], {"eps": 1e-6}),
        ("add", ["h", "n"], ["out"], {}),
    ]


def norms_then_linears() -> Graph:
    g = base()
    weight(g, "w.weight", H, H)
    weight(g, "u.weight", H, H)
    weight(g, "v.weight", 2 * H, H)
    weight(g, "half.weight", H, H // 2)
    weight(g, "norm.weight", H)
    g.call("linear", ["x", "w.weight"], ["y"])
    g.call("add_rmsnorm", ["y", "x", "norm.weight"], ["n", "h"], eps=1e-6)
    g.call("linear", ["n", "u.weight"], ["z"])  # right after, its only reader: marked
    g.call("rmsnorm", ["z", "norm.weight"], ["m"], eps=1e-6)
    g.call("add", ["m", "h"], ["a"])
    g.call("linear", ["m", "u.weight"], ["b"])  # m has two readers: not marked
    g.call("rmsnorm", ["b", "norm.weight"], ["c"], eps=1e-6)
    g.call("add", ["c", "a"], ["d"])
    g.call("linear", ["c", "v.weight"], ["e"])  # not right after the norm: not marked
    g.call("silu_mul", ["e"], ["s"])  # the linear before's only reader: its epilogue
    g.call("linear", ["s", "u.weight"], ["f"])
    g.call("add", ["f", "f"], ["f1"])
    g.call("silu_mul", ["f1"], ["s2"])  # after no linear: folded into the next, as a norm is
    g.call("linear", ["s2", "half.weight"], ["f2"])
    g.values["d"].kind = g.values["f"].kind = g.values["f2"].kind = "output"
    return g


def test_fold_into_linears():
    after = fold_into_linears(norms_then_linears())
    assert [(n.op, n.attrs) for n in after.nodes[1:]] == [
        ("linear", {}), ("add_rmsnorm", {"eps": 1e-6, "fold_into_next": True}), ("linear", {}),
        ("rmsnorm", {"eps": 1e-6}), ("add", {}), ("linear", {}), ("rmsnorm", {"eps": 1e-6}),
        ("add", {}), ("linear", {}), ("silu_mul", {"fold_into_previous": True}),
        ("linear", {}), ("add", {}), ("silu_mul", {"fold_into_next": True}), ("linear", {})]


def test_fold_into_linears_takes_fp8_quantization_into_linear_fp8():
    g = base()
    fp8 = "float8_e4m3fn"
    g.add_weight("w.weight", fp8, (H, H), g.sources["embed.weight"])
    weight(g, "s", 1)
    weight(g, "norm.weight", H)
    g.call("quantize_fp8", ["x", "s"], ["q"])
    g.call("linear_fp8", ["q", "w.weight", "s", "s"], ["y"], dtype="float32")  # marked
    g.call("add_rmsnorm_quant", ["y", "x", "norm.weight", "s"], ["n", "h"], eps=1e-6,
           qdtype=fp8)
    g.call("linear_fp8", ["n", "w.weight", "s", "s"], ["z"], dtype="float32")  # marked
    g.call("rmsnorm", ["z", "norm.weight"], ["m"], eps=1e-6)  # feeds no linear
    g.call("quantize_fp8", ["m", "s"], ["q2"])
    g.call("linear_fp8", ["q2", "w.weight", "s", "s"], ["e"], dtype="float32")
    g.call("linear_fp8", ["q2", "w.weight", "s", "s"], ["f"], dtype="float32")  # 2 readers
    g.values["e"].kind = g.values["f"].kind = g.values["h"].kind = "output"
    after = fold_into_linears(g)
    assert [(n.op, n.attrs.get("fold_into_next", False)) for n in after.nodes[1:]] == [
        ("quantize_fp8", True), ("linear_fp8", False), ("add_rmsnorm_quant", True),
        ("linear_fp8", False), ("rmsnorm", False), ("quantize_fp8", False),
        ("linear_fp8", False), ("linear_fp8", False)]


def test_fold_into_linears_takes_an_fp8_silu_mul_quant_into_the_linear_fp8_before():
    g = base()
    fp8 = "float8_e4m3fn"
    g.add_weight("gu.weight", fp8, (2 * H, H), g.sources["embed.weight"])
    g.add_weight("d.weight", fp8, (H, H), g.sources["embed.weight"])
    weight(g, "s", 1)
    weight(g, "smooth", H)
    g.call("quantize_fp8", ["x", "s"], ["q"])
    g.call("linear_fp8", ["q", "gu.weight", "s", "s"], ["e"], dtype="float32")
    g.call("silu_mul_quant", ["e", "s"], ["a"], qdtype=fp8)  # e's only reader: the epilogue
    g.call("linear_fp8", ["a", "d.weight", "s", "s"], ["y"], dtype="float32")
    g.call("linear_fp8", ["q", "gu.weight", "s", "s"], ["e2"], dtype="float32")
    g.call("silu_mul_quant", ["e2", "smooth"], ["a2", "a2_scale"], qdtype="int8")  # not FP8
    g.values["y"].kind = g.values["a2"].kind = g.values["a2_scale"].kind = "output"
    after = fold_into_linears(g)
    assert [(n.op, n.attrs.get("fold_into_next", False), n.attrs.get("fold_into_previous", False))
            for n in after.nodes[1:]] == [
        ("quantize_fp8", False, False), ("linear_fp8", False, False),
        ("silu_mul_quant", False, True), ("linear_fp8", False, False),
        ("linear_fp8", False, False), ("silu_mul_quant", False, False)]


def test_plan_memory_keeps_a_folded_norms_inputs_through_the_linear():
    build = BuildConfig(dtype="float32", max_num_tokens=8, max_batch_size=2, max_seq_len=64,
                        tokens_per_block=16)
    g = base()
    weight(g, "w.weight", H, H)
    weight(g, "norm.weight", H)
    g.call("linear", ["x", "w.weight"], ["y"])
    g.call("add_rmsnorm", ["y", "x", "norm.weight"], ["n", "h"], eps=1e-6)
    g.call("linear", ["n", "w.weight"], ["z"])
    g.call("add", ["z", "h"], ["out"])
    g.values["out"].kind = "output"
    # T=8 float32 [8,16]: 512 B each. Unmarked, z reuses the bytes of x or y, whose last
    # reader is the norm.
    unmarked = plan_memory(g, build).memory_plan["offsets"]
    assert unmarked["z"] in (unmarked["x"], unmarked["y"])
    plan = plan_memory(fold_into_linears(g), build).memory_plan["offsets"]
    assert len({plan["z"], plan["y"], plan["x"], plan["n"], plan["h"]}) == 5


def test_plan_memory_keeps_a_gemm_steps_inputs_through_its_epilogue():
    """A norm folded into a gate/up linear and the SiLU-mul after it run as one GEMM step: the
    SiLU-mul's output may be written while the norm's and the linear's inputs are read."""
    build = BuildConfig(dtype="float32", max_num_tokens=8, max_batch_size=2, max_seq_len=64,
                        tokens_per_block=16)
    g = base()
    weight(g, "w.weight", H, H)
    weight(g, "v.weight", 2 * H, H)
    weight(g, "norm.weight", H)
    g.call("linear", ["x", "w.weight"], ["y"])
    g.call("add_rmsnorm", ["y", "x", "norm.weight"], ["n", "h"], eps=1e-6)
    g.call("linear", ["n", "v.weight"], ["e"])
    g.call("silu_mul", ["e"], ["s"])
    g.call("add", ["s", "h"], ["out"])
    g.values["out"].kind = "output"
    unmarked = plan_memory(g, build).memory_plan["offsets"]
    assert unmarked["s"] in (unmarked["x"], unmarked["y"], unmarked["n"])
    folded = fold_into_linears(g)
    assert folded.nodes[-4].attrs == {"eps": 1e-6, "fold_into_next": True}
    assert folded.nodes[-2].attrs == {"fold_into_previous": True}
    plan = plan_memory(folded, build).memory_plan["offsets"]
    assert len({plan[v] for v in ("x", "y", "n", "h", "e", "s")}) == 6


def test_drop_dead_values():
    before = base()
    weight(before, "unused.weight", H, H)
    weight(before, "w.weight", H, H)
    before.call("linear", ["x", "unused.weight"], ["dead"])
    before.call("linear", ["x", "w.weight"], ["y"])
    before.values["y"].kind = "output"
    after = drop_dead_values(before)
    assert after.ops() == ["embedding", "linear"]
    assert "unused.weight" not in after.values and "unused.weight" not in after.sources
    assert "dead" not in after.values and "input_ids" in after.values


def test_plan_memory_reuses_dead_buffers_and_aliases_splits():
    g = base()
    weight(g, "w.weight", 32, H)
    weight(g, "o.weight", H, 16)
    g.call("linear", ["x", "w.weight"], ["qkv"])
    g.call("split", ["qkv"], ["q", "k"], sizes=[16, 16])
    g.call("add", ["q", "k"], ["s"])
    g.call("linear", ["s", "o.weight"], ["y"])
    g.values["y"].kind = "output"
    build = BuildConfig(dtype="float32", max_num_tokens=8, max_batch_size=2, max_seq_len=64,
                        tokens_per_block=16)
    plan = plan_memory(g, build).memory_plan
    # T=8 float32: x [8,16] 512 B, qkv [8,32] 1024 B, s 512 B, y 512 B; 256-byte aligned.
    assert plan["offsets"] == {"x": 0, "qkv": 512, "q": 512, "k": 512 + 64, "s": 0, "y": 512}
    assert plan["views"] == {"q": {"of": "qkv", "row_stride": 32}, "k": {"of": "qkv", "row_stride": 32}}
    assert plan["arena_bytes"] == 1536
    assert plan["symbols"] == {"T": 8, "B": 2, "MAXBLK": 4}


def test_pipeline_order_and_disabled_pass_is_a_no_op():
    assert [name for name, _ in PIPELINE] == [
        "fuse_qkv", "fuse_gate_up", "fold_rope_into_attention", "gather_last_tokens",
        "fuse_add_rmsnorm", "quantize_linears", "quantize_kv_cache", "quantize_fuse_producers",
        "drop_dead_values", "fold_residual_into_linears", "fold_into_linears", "plan_memory"]
    g = base()
    weight(g, "gate.weight", I, H)
    weight(g, "up.weight", I, H)
    g.call("linear", ["x", "gate.weight"], ["a"])
    g.call("linear", ["x", "up.weight"], ["b"])
    g.call("silu", ["a"], ["s"])
    g.call("mul", ["s", "b"], ["m"])
    g.values["m"].kind = "output"
    build = BuildConfig(dtype="float32", max_num_tokens=4, max_batch_size=1, max_seq_len=32)
    assert "silu_mul" in run_pipeline(g, build).ops()
    assert "silu_mul" not in run_pipeline(g, build, disabled=frozenset({"fuse_gate_up"})).ops()


def residual_layer(quant: bool = False) -> Graph:
    """An o-projection whose output only the add + RMSNorm after it reads, then a linear of the
    norm; with `quant`, the FP8 forms (linear_fp8, add_rmsnorm_quant)."""
    from kiln.builder.ir import WeightSource
    g = base()
    weight(g, "norm.weight", H)
    weight(g, "u.weight", H, H)

    def fp8(name, *shape, scale=False):
        seed = sum(map(ord, name))
        g.add_weight(name, "float32" if scale else "float8_e4m3fn", shape, WeightSource(
            load=lambda dtype: (torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
                                * 0.1 + 0.02 if scale else
                                torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
                                ).to(dtype), describe=name))

    if quant:
        fp8("o.weight", H, H)
        for name in ("o.x_scale", "o.w_scale", "n.scale"):
            fp8(name, 1, scale=True)
        g.call("quantize_fp8", ["x", "o.x_scale"], ["xq"])
        g.call("linear_fp8", ["xq", "o.weight", "o.x_scale", "o.w_scale"], ["y"],
               dtype="float32")
        g.call("add_rmsnorm_quant", ["y", "x", "norm.weight", "n.scale"], ["q", "h"], eps=1e-6,
               qdtype="float8_e4m3fn")
        g.call("linear_fp8", ["q", "o.weight", "n.scale", "o.w_scale"], ["z"], dtype="float32")
    else:
        weight(g, "o.weight", H, H)
        g.call("linear", ["x", "o.weight"], ["y"])
        g.call("add_rmsnorm", ["y", "x", "norm.weight"], ["n", "h"], eps=1e-6)
        g.call("linear", ["n", "u.weight"], ["z"])
    g.call("add", ["z", "h"], ["out"])
    g.values["out"].kind = "output"
    return g


def evaluate(g: Graph) -> torch.Tensor:
    """The graph's output by the ops' references, for input ids drawn from a fixed seed."""
    from kiln.builder import ops
    env = {"input_ids": torch.randint(0, V, (5,), generator=torch.Generator().manual_seed(1))}
    for name in g.of_kind("weight"):
        env[name] = g.sources[name].load(getattr(torch, g.values[name].dtype))
    for node in g.nodes:
        env.update(zip(node.outputs, ops.run(node, [env[i] for i in node.inputs], None)))
    return env["out"]


@pytest.mark.parametrize("quant", [False, True])
def test_fold_residual_into_linears(quant):
    """The GEMM before an add + RMSNorm that alone reads its output adds the residual itself;
    the norm becomes an RMSNorm of the sum, and the graph computes the same values."""
    from kiln.builder.passes import fold_residual_into_linears
    before = residual_layer(quant)
    after = fold_residual_into_linears(before)
    after.verify()
    gemm, norm = after.nodes[-4:-2]
    if quant:
        assert (gemm.op, gemm.inputs, gemm.outputs, gemm.attrs) == (
            "linear_fp8", ["xq", "o.weight", "o.x_scale", "o.w_scale", "x"], ["h"],
            {"dtype": "float32", "residual": True})
        assert (norm.op, norm.inputs, norm.outputs) == (
            "rmsnorm_quant", ["h", "norm.weight", "n.scale"], ["q"])
    else:
        assert (gemm.op, gemm.inputs, gemm.outputs, gemm.attrs) == (
            "linear", ["x", "o.weight", "x"], ["h"], {"residual": True})
        assert (norm.op, norm.inputs, norm.outputs, norm.attrs) == (
            "rmsnorm", ["h", "norm.weight"], ["n"], {"eps": 1e-6})
    assert "y" not in after.values
    want = evaluate(before)
    assert torch.isfinite(want).all() and torch.equal(evaluate(after), want)


def test_fold_residual_into_linears_leaves_other_readers():
    """A GEMM output read by anything besides the norm, or a norm whose x is no GEMM's, stays."""
    from kiln.builder.passes import fold_residual_into_linears
    g = residual_layer()
    g.call("add", ["y", "x"], ["also"])
    g.values["also"].kind = "output"
    assert fold_residual_into_linears(g).structure() == g.structure()
    g = base()
    weight(g, "norm.weight", H)
    g.call("add_rmsnorm", ["x", "x", "norm.weight"], ["n", "h"], eps=1e-6)
    g.values["n"].kind = "output"
    assert fold_residual_into_linears(g).structure() == g.structure()
