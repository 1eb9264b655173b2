"""The quantized ops' torch references: shapes, and the math against independent forms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kiln.builder import ops
from kiln.builder.ir import DTYPES, Graph, Node
from kiln.quantize import pack

T, K, N = 5, 64, 24
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(op: str, values: dict[str, torch.Tensor], inputs: list[str], outputs: list[str], ctx=None,
        **attrs) -> list[torch.Tensor]:
    """Declares `values` in a graph, infers the node's outputs, runs its reference."""
    g = Graph()
    for name, t in values.items():
        g.add_value(name, DTYPE_NAMES[t.dtype], tuple(t.shape), "input")
    g.call(op, inputs, outputs, **attrs)
    results = ops.run(g.nodes[0], [values[n] for n in inputs], ctx or ops.StepContext())
    for name, result in zip(outputs, results):
        v = g.values[name]
        assert (str(result.dtype).removeprefix("torch."), tuple(result.shape)) == (v.dtype, v.shape)
    return results


def test_quantize_fp8_and_linear_fp8():
    x = torch.randn(T, K, generator=gen(0))
    w = torch.randn(N, K, generator=gen(1)) * 0.05
    xs, ws = torch.tensor([x.abs().max() / 448]), torch.tensor([w.abs().max() / 448])
    (q,) = run("quantize_fp8", {"x": x, "xs": xs}, ["x", "xs"], ["q"])
    assert torch.equal(q.float(), pack.to_fp8(x, xs).float())
    bias = torch.randn(N, generator=gen(2))
    wq = pack.to_fp8(w, ws)
    (y,) = run("linear_fp8", {"q": q, "w": wq, "xs": xs, "ws": ws, "b": bias},
               ["q", "w", "xs", "ws", "b"], ["y"], dtype="bfloat16")
    expected = (q.double() * xs.double()) @ (wq.double() * ws.double()).T + bias.double()
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.double(), expected.to(torch.bfloat16).double(), rtol=1e-2, atol=1e-2)
    # and it is close to the unquantized product
    assert (y.float() - (x @ w.T + bias)).abs().max() < 0.05 * (x @ w.T).abs().max()


def test_linear_w8a8_is_exact_integer_math():
    x = torch.randn(T, K, generator=gen(3))
    smoother = torch.rand(K, generator=gen(4)) + 0.5
    q, rs = run("quantize_int8", {"x": x, "s": smoother}, ["x", "s"], ["q", "rs"])
    q2, rs2 = pack.per_token_int8(x * smoother)
    assert torch.equal(q, q2) and torch.equal(rs, rs2)
    w = torch.randint(-128, 128, (N, K), generator=gen(5), dtype=torch.int8)
    ws = torch.rand(N, generator=gen(6)) / 100
    (y,) = run("linear_w8a8", {"q": q, "rs": rs, "w": w, "ws": ws}, ["q", "rs", "w", "ws"],
               ["y"], dtype="float32")
    acc = q.long() @ w.long().T  # exact in int64
    assert torch.equal(y, acc.float() * rs[:, None] * ws[None, :])


@pytest.mark.parametrize("bits, offset, pqs", [(4, False, False), (4, True, True), (8, False, True)])
def test_linear_wo(bits, offset, pqs):
    """Against a plain float64 dequantization: (u - 8) * scale + offset, u * scale for int8."""
    x = torch.randn(T, K, generator=gen(7))
    group = 32 if bits == 4 else K
    scales = torch.rand(N, K // group, generator=gen(8)) / 10 + 0.01
    offsets = torch.randn(N, K // group, generator=gen(10)) / 10  # floats, none of them 0
    if bits == 4:
        u = torch.randint(0, 16, (N, K), generator=gen(9), dtype=torch.uint8)
        w = pack.pack_int4(u)
        real = (u.double() - 8) * scales.double().repeat_interleave(group, 1)
        if offset:
            real += offsets.double().repeat_interleave(group, 1)
    else:
        w = torch.randint(-128, 128, (N, K), generator=gen(9), dtype=torch.int8)
        real = w.double() * scales.double()
    values = {"x": x, "w": w, "s": scales}
    names = ["x", "w", "s"]
    if offset:
        values["o"], names = offsets, names + ["o"]
    p = torch.rand(K, generator=gen(11)) + 0.5
    if pqs:
        values["p"], names = p, names + ["p"]
    (y,) = run("linear_wo", values, names, ["y"], bits=bits, group_size=group,
               offset=offset, pre_quant_scale=pqs, bias=False)
    expected = (x.double() * (p.double() if pqs else 1.0)) @ real.T
    assert torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_linear_wo_offsets_round_once():
    """The reference's int4 weight with offsets is (u - 8) * scale + offset rounded once to
    float32, as a fused multiply-add gives it (the kernels' tl.fma), then to the dtype."""
    scales = torch.tensor([[1.2296912670135498]])  # 7 * scale is not exact in float32
    offsets = torch.tensor([[-8.60783863067627]])
    u = torch.full((1, 2), 15, dtype=torch.uint8)
    w = pack.dequantize_weight(pack.pack_int4(u), 4, scales, 2, offsets)
    assert w.tolist() == [[2.0 ** -22] * 2]  # 7 * scale + offset, rounded once
    assert (7 * scales + offsets).item() == 0.0  # rounded twice


@pytest.mark.parametrize("qdtype", ["float8_e4m3fn", "int8"])
def test_fused_norms_equal_the_unfused_ops(qdtype):
    x = torch.randn(T, K, generator=gen(12))
    r = torch.randn(T, K, generator=gen(13))
    w = torch.rand(K, generator=gen(14)) + 0.5
    scale = torch.tensor([0.01])
    extra = {"scale": scale} if qdtype != "int8" else {}
    quant_op = "quantize_fp8" if qdtype != "int8" else "quantize_int8"
    qout = ["q"] if qdtype != "int8" else ["q", "rs"]

    (normed,) = run("rmsnorm", {"x": x, "w": w}, ["x", "w"], ["n"], eps=1e-5)
    unfused = run(quant_op, {"n": normed, **extra}, ["n", *extra], qout)
    fused = run("rmsnorm_quant", {"x": x, "w": w, **extra}, ["x", "w", *extra], qout,
                eps=1e-5, qdtype=qdtype)
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(fused, unfused))

    normed, total = run("add_rmsnorm", {"x": x, "r": r, "w": w}, ["x", "r", "w"], ["n", "t"], eps=1e-5)
    unfused = run(quant_op, {"n": normed, **extra}, ["n", *extra], qout) + [total]
    fused = run("add_rmsnorm_quant", {"x": x, "r": r, "w": w, **extra}, ["x", "r", "w", *extra],
                qout + ["t"], eps=1e-5, qdtype=qdtype)
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(fused, unfused))

    gu = torch.randn(T, 2 * K, generator=gen(15))
    extra = extra or {"smoother": torch.rand(K, generator=gen(16)) + 0.5}
    (act,) = run("silu_mul", {"gu": gu}, ["gu"], ["a"])
    unfused = run(quant_op, {"a": act, **extra}, ["a", *extra], qout)
    fused = run("silu_mul_quant", {"gu": gu, **extra}, ["gu", *extra], qout, qdtype=qdtype)
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(fused, unfused))


@pytest.mark.parametrize("kv_dtype", ["float8_e4m3fn", "int8"])
def test_attention_reads_a_quantized_cache(kv_dtype):
    nq, nkv, hd, tpb = 4, 2, 16, 4
    q = torch.randn(6, nq * hd, generator=gen(17))
    k = torch.randn(6, nkv * hd, generator=gen(18))
    v = torch.randn(6, nkv * hd, generator=gen(19))
    step = {"positions": torch.tensor([0, 1, 2, 3, 0, 1], dtype=torch.int32),
            "slot_mapping": torch.tensor([4, 5, 6, 7, 0, 1], dtype=torch.int64),
            "block_tables": torch.tensor([[1, 0], [0, 0]], dtype=torch.int32),
            "context_lens": torch.tensor([4, 2], dtype=torch.int32),
            "query_start": torch.tensor([0, 4, 6], dtype=torch.int32)}
    bound = 448.0 if kv_dtype == "float8_e4m3fn" else 127.0
    ks, vs = torch.tensor([k.abs().max() / bound]), torch.tensor([v.abs().max() / bound])
    attrs = dict(layer=0, num_heads=nq, num_kv_heads=nkv, head_dim=hd, scale=hd ** -0.5, rope=None)
    cache = torch.zeros(1, 2, 2, nkv, tpb, hd, dtype=getattr(torch, kv_dtype))
    names = ["q", "k", "v", *step, "ks", "vs"]
    (out,) = run("attention", {"q": q, "k": k, "v": v, **step, "ks": ks, "vs": vs}, names, ["o"],
                 ops.StepContext(kv_cache=cache), kv_dtype=kv_dtype, **attrs)
    assert cache.dtype == getattr(torch, kv_dtype) and cache.float().abs().sum() > 0
    # the same attention over float K/V that already went through the quantizer
    from kiln.builder.ops.quant import dequantize_kv, quantize_kv
    kq = dequantize_kv(quantize_kv(k, kv_dtype, ks), ks)
    vq = dequantize_kv(quantize_kv(v, kv_dtype, vs), vs)
    plain = torch.zeros(1, 2, 2, nkv, tpb, hd)
    (ref,) = run("attention", {"q": q, "k": kq, "v": vq, **step}, names[:8], ["o"],
                 ops.StepContext(kv_cache=plain), **attrs)
    assert torch.equal(out, ref)
    (exact,) = run("attention", {"q": q, "k": k, "v": v, **step}, names[:8], ["o"],
                   ops.StepContext(kv_cache=torch.zeros(1, 2, 2, nkv, tpb, hd)), **attrs)
    assert 0 < (out - exact).abs().max() < 0.2


def test_inference_refuses_wrong_operands():
    g = Graph()
    g.add_value("x", "float8_e4m3fn", ("T", K), "input")
    g.add_value("w", "float32", (N, K), "weight")
    g.add_value("s", "float32", (1,), "weight")
    with pytest.raises(ValueError, match="needs fp8 x"):
        g.call("linear_fp8", ["x", "w", "s", "s"], ["y"], dtype="float32")
    g.add_value("u", "uint8", (N, K // 2), "weight")
    g.add_value("xf", "float32", ("T", K), "input")
    g.add_value("sc", "float32", (N, K // 32), "weight")
    with pytest.raises(ValueError, match=r"expects inputs \['x', 'weight', 'scales', 'offsets'\]"):
        g.call("linear_wo", ["xf", "u", "sc"], ["y"], bits=4, group_size=32, offset=True,
               pre_quant_scale=False, bias=False)
    g.add_value("zeros", "uint8", (N, K // 32), "weight")
    with pytest.raises(ValueError, match=r"offsets must be float32 \[%d, %d\] of an int4 weight"
                       % (N, K // 32)):
        g.call("linear_wo", ["xf", "u", "sc", "zeros"], ["y"], bits=4, group_size=32,
               offset=True, pre_quant_scale=False, bias=False)
    g.call("linear_wo", ["xf", "u", "sc"], ["y"], bits=4, group_size=32, offset=False,
           pre_quant_scale=False, bias=False)
    assert g.values["y"].dtype == "float32" and g.values["y"].shape == ("T", N)
    node = Node("attention", ["xf"] * 8, ["o"], dict(layer=0, num_heads=2, num_kv_heads=2,
                                                     head_dim=32, scale=1.0, kv_dtype="int8"))
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        ops.infer(node, g)
