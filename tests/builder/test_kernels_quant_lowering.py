"""The lowering of every quantized op (kiln.builder.kernels.quant, quant_gemm): the launches,
GEMMs, launch conditions and buffers each plans, and cubins for the GPUs that run them."""
from types import SimpleNamespace

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kiln.builder.ir import Graph, WeightSource  # noqa: E402
from kiln.builder.kernels import aot  # noqa: E402
from kiln.builder.kernels.gemm import GEMV_CONFIGS_FP8, SMALL_CONFIGS_FP8  # noqa: E402
from kiln.builder.kernels.lower import lower  # noqa: E402
from kiln.builder.kernels.spec import Gemm, Launch  # noqa: E402

H, I, DT = 256, 512, "bfloat16"
# What lower() reads of a BuildConfig.
BUILD = SimpleNamespace(tokens_per_block=16, dtype=DT, kv_dtype=DT, max_num_tokens=64)


def quantized_graph() -> Graph:
    """One of each quantized op, shapes checked by the ops' inference."""
    g = Graph()
    src = WeightSource(load=lambda dtype: None, describe="test")
    g.add_value("x", DT, ("T", H), "input")
    g.add_value("res", DT, ("T", H), "input")

    def weight(name, dtype, *shape):
        return g.add_weight(name, dtype, shape, src)

    norm_w, s1 = weight("norm.weight", DT, H), weight("in_scale", "float32", 1)
    g.call("add_rmsnorm_quant", ["x", "res", norm_w, s1], ["q8", "sum"], eps=1e-5,
           qdtype="float8_e4m3fn")
    g.call("linear_fp8", ["q8", weight("qkv.weight", "float8_e4m3fn", 384, H), s1,
                          weight("qkv.weight_scale", "float32", 1)], ["qkv"], dtype=DT)
    g.call("rmsnorm_quant", ["sum", norm_w], ["qi", "qi_scale"], eps=1e-5, qdtype="int8")
    g.call("linear_w8a8", ["qi", "qi_scale", weight("up.weight", "int8", 2 * I, H),
                           weight("up.weight_scale", "float32", 2 * I),
                           weight("up.bias", DT, 2 * I)], ["up"], dtype=DT)
    g.call("silu_mul_quant", ["up", weight("down.pre_quant_scale", "float32", I)],
           ["act", "act_scale"], qdtype="int8")
    g.call("silu_mul_quant", ["up", s1], ["act8"], qdtype="float8_e4m3fn")
    g.call("quantize_int8", ["qkv"], ["qq", "qq_scale"])
    g.call("quantize_fp8", ["qkv", s1], ["qq8"])
    g.call("linear_wo", ["x", weight("awq.weight", "uint8", I, H // 2),
                         weight("awq.weight_scale", DT, I, H // 128),
                         weight("awq.weight_offset", DT, I, H // 128),
                         weight("awq.pre_quant_scale", "float32", H)], ["awq"],
           bits=4, group_size=128, offset=True, pre_quant_scale=True, bias=False)
    g.call("linear_wo", ["x", weight("wo8.weight", "int8", H, H),
                         weight("wo8.weight_scale", DT, H, 1)], ["wo8"],
           bits=8, group_size=H, offset=False, pre_quant_scale=False, bias=False)
    acts = [n for n, v in g.values.items() if v.kind == "activation"]
    g.memory_plan = {"offsets": {n: 4096 * i for i, n in enumerate(acts)}, "views": {}}
    return g


@pytest.fixture(scope="module")
def lowered():
    return lower(quantized_graph(), BUILD)


def steps_of(ctx, op):
    return [s for s in ctx.program if s.label.split(":")[1] == op]


def test_each_op_lowers_to_its_kernels(lowered):
    names = {op: [s.kernel.fn.fn.__name__ if isinstance(s, Launch) else "gemm"
                  for s in steps_of(lowered, op)]
             for op in ("add_rmsnorm_quant", "linear_fp8", "rmsnorm_quant", "linear_w8a8",
                        "silu_mul_quant", "quantize_int8", "quantize_fp8", "linear_wo")}
    assert names == {
        "add_rmsnorm_quant": ["rmsnorm_quant_kernel"], "linear_fp8": ["gemm"],
        "rmsnorm_quant": ["rmsnorm_quant_kernel"], "linear_w8a8": ["w8a8_kernel"] * 2,
        "silu_mul_quant": ["int8_rows_kernel", "fp8_rows_kernel"],
        "quantize_int8": ["int8_rows_kernel"], "quantize_fp8": ["fp8_rows_kernel"],
        "linear_wo": ["gemm"] * 2}


def test_linear_fp8_is_a_scaled_cublaslt_gemm(lowered):
    (gemm,) = steps_of(lowered, "linear_fp8")
    assert isinstance(gemm, Gemm)
    plan = gemm.to_json()
    alternatives = plan.pop("alternatives")
    assert plan == {
        "kind": "gemm", "label": gemm.label, "a": {"arena": 0}, "w": {"weight": "qkv.weight"},
        "out": {"arena": 4096 * 2}, "bias": None, "m": "T", "n": 384, "k": H, "lda": H,
        "ldc": 384, "dtype": DT, "in_dtype": "float8_e4m3fn", "a_scale": {"weight": "in_scale"},
        "w_scale": {"weight": "qkv.weight_scale"}}
    # For M <= 16 the executor may run the scaled small-M kernel instead, fed the same operands,
    # and for one row the scaled GEMV.
    assert [a["max_m"] for a in alternatives] == ([16] * len(SMALL_CONFIGS_FP8)
                                                  + [1] * len(GEMV_CONFIGS_FP8))
    launches = gemm.launches()
    for alternative, launch in zip(alternatives, launches):
        (step,) = alternative["steps"]
        assert step["args"][0] == {"arena": 4096 * 2}
        assert step["grid"] == [str(-(-384 // launch.kernel.constexprs["BLOCK_N"])), "1", "1"]
    for launch in launches[:len(SMALL_CONFIGS_FP8)]:
        assert launch.kernel.fn.fn.__name__ == "small_m_gemm_kernel"
        assert launch.kernel.constexprs["SCALED"] and not launch.kernel.constexprs["HAS_BIAS"]
        assert launch.to_json()["args"][1:3] == [{"arena": 0}, {"weight": "qkv.weight"}]
        assert launch.to_json()["args"][4:] == [{"weight": "in_scale"},
                                                {"weight": "qkv.weight_scale"}] + [
            {"weight": "qkv.weight"}] * 3 + [{"i32": "T"}]  # no SiLU-mul, no residual: the weight
    for launch in launches[len(SMALL_CONFIGS_FP8):]:
        c = launch.kernel.constexprs
        assert launch.kernel.fn.fn.__name__ == "gemv_kernel"
        assert (c["PROLOGUE"], c["QUANTIZE"], c["SCALED"]) == (0, False, True)
        args = launch.to_json()["args"]
        assert args[1:7] == [{"weight": "qkv.weight"}, {"arena": 0}] + [
            {"weight": "qkv.weight"}] * 4  # x is the FP8 input; unused operands: the weight
        assert args[7:12] == [{"weight": "in_scale"}, {"weight": "qkv.weight_scale"}] + [
            {"weight": "qkv.weight"}] * 3  # no SiLU-mul, no residual


def test_fp8_quantization_folded_into_the_gemm():
    """Marked by fold_into_linears, the FP8 norm before a linear_fp8 runs inside its GEMM step:
    before cuBLASLt and the small-M kernels, and in the one-row kernel as its prologue, which
    quantizes x itself (the FP8 input is then never written at M = 1)."""
    from kiln.builder.passes import fold_into_linears
    g = fold_into_linears(quantized_graph())
    marked = [n.op for n in g.nodes if n.attrs.get("fold_into_next")]
    assert marked == ["add_rmsnorm_quant"]  # the only quantization feeding a linear_fp8 alone
    ctx = lower(g, BUILD)
    assert steps_of(ctx, "add_rmsnorm_quant") == []
    (gemm,) = steps_of(ctx, "linear_fp8")
    (norm,) = gemm.prologue
    assert norm.kernel.fn.fn.__name__ == "rmsnorm_quant_kernel"
    small = gemm.alternatives[:len(SMALL_CONFIGS_FP8)]
    assert all(alt["steps"][0] is norm and len(alt["steps"]) == 2 for alt in small)
    one_row = gemm.alternatives[len(SMALL_CONFIGS_FP8):]
    assert [alt["max_m"] for alt in one_row] == [1] * 2 * len(GEMV_CONFIGS_FP8)
    for alt in one_row[:len(GEMV_CONFIGS_FP8)]:
        (launch,) = alt["steps"]
        c = launch.kernel.constexprs
        assert (c["PROLOGUE"], c["QUANTIZE"], c["SCALED"]) == (2, True, True)  # ADD_NORM
        args = launch.to_json()["args"]
        # out, sum, x, res, gamma, w, bias (unused), a_scale, w_scale, eps
        assert args[:9] == [{"arena": 4096 * 2}, {"arena": 4096 * 1}, {"input": "x"},
                            {"input": "res"}, {"weight": "norm.weight"},
                            {"weight": "qkv.weight"}, {"weight": "qkv.weight"},
                            {"weight": "in_scale"}, {"weight": "qkv.weight_scale"}]
    # Then each configuration after the norm's own launch, on the FP8 input it writes.
    for alt in one_row[len(GEMV_CONFIGS_FP8):]:
        first, launch = alt["steps"]
        c = launch.kernel.constexprs
        assert first is norm and (c["PROLOGUE"], c["QUANTIZE"], c["SCALED"]) == (0, False, True)
        assert launch.to_json()["args"][2] == {"arena": 0}


def test_fp8_silu_mul_quant_is_the_gate_up_gemms_epilogue():
    """An FP8 SiLU-mul quantization that alone reads a linear_fp8 runs inside that GEMM step:
    after cuBLASLt, and in each small-M and one-row configuration both inside the kernel (GLU,
    writing the e4m3 output with its scale) and as its own launch after it."""
    from kiln.builder.passes import fold_into_linears
    g = Graph()
    src = WeightSource(load=lambda dtype: None, describe="test")
    g.add_value("q", "float8_e4m3fn", ("T", H), "input")
    s = g.add_weight("s", "float32", (1,), src)
    w = g.add_weight("gate_up.weight", "float8_e4m3fn", (2 * I, H), src)
    g.call("linear_fp8", ["q", w, s, s], ["gate_up"], dtype=DT)
    g.call("silu_mul_quant", ["gate_up", s], ["act"], qdtype="float8_e4m3fn")
    g.values["act"].kind = "output"
    g = fold_into_linears(g)
    assert g.nodes[-1].attrs == {"qdtype": "float8_e4m3fn", "fold_into_previous": True}
    g.memory_plan = {"offsets": {"gate_up": 0, "act": 4096 * 16}, "views": {}}
    ctx = lower(g, BUILD)
    assert steps_of(ctx, "silu_mul_quant") == []
    (gemm,) = steps_of(ctx, "linear_fp8")
    (after,) = gemm.epilogue
    assert after.kernel.fn.fn.__name__ == "fp8_rows_kernel" and after.kernel.constexprs["SILU_MUL"]
    assert gemm.prologue == []
    names = [[step.kernel.fn.fn.__name__ for step in alt["steps"]] for alt in gemm.alternatives]
    assert names == [["small_m_gemm_kernel"], ["small_m_gemm_kernel", "fp8_rows_kernel"]] * len(
        SMALL_CONFIGS_FP8) + [["gemv_kernel"], ["gemv_kernel", "fp8_rows_kernel"]] * len(
        GEMV_CONFIGS_FP8)
    for alt in gemm.alternatives:
        main = alt["steps"][0]
        glu = len(alt["steps"]) == 1
        assert bool(main.kernel.constexprs["GLU"]) == glu
        assert alt["steps"][1:] in ([], [after])
        # act_ptr, act_scale_ptr: the SiLU-mul's output and scale, or unused (the weight).
        act = [{"arena": 4096 * 16}, {"weight": "s"}] if glu else [{"weight": w}] * 2
        i = 6 if main.kernel.fn.fn.__name__ == "small_m_gemm_kernel" else 9
        assert main.to_json()["args"][i:i + 2] == act
        if glu and i == 6:
            assert main.kernel.constexprs["ACT_STRIDE"] == I


@pytest.mark.parametrize("bits", [4, 8])
def test_silu_mul_is_the_weight_only_gate_up_gemms_epilogue(bits):
    """A SiLU-mul that alone reads a linear_wo runs inside that GEMM step: after cuBLASLt and
    after each alternative as its own launch, and for int4 inside the tensor-core kernel (GLU)
    in each configuration for up to 16 rows."""
    from kiln.builder.kernels import quant_gemm
    from kiln.builder.passes import fold_into_linears
    g = Graph()
    src = WeightSource(load=lambda dtype: None, describe="test")
    g.add_value("x", DT, ("T", H), "input")
    group = 128 if bits == 4 else H
    w = g.add_weight("gate_up.weight", "uint8" if bits == 4 else "int8",
                     (2 * I, H * bits // 8), src)
    scale = g.add_weight("gate_up.weight_scale", DT, (2 * I, H // group), src)
    g.call("linear_wo", ["x", w, scale], ["gate_up"], bits=bits, group_size=group,
           offset=False, pre_quant_scale=False, bias=False)
    g.call("silu_mul", ["gate_up"], ["act"])
    g.values["act"].kind = "output"
    g = fold_into_linears(g)
    assert g.nodes[-1].attrs == {"fold_into_previous": True}
    g.memory_plan = {"offsets": {"gate_up": 0, "act": 4096 * 16}, "views": {}}
    ctx = lower(g, BUILD)
    assert steps_of(ctx, "silu_mul") == []
    (gemm,) = steps_of(ctx, "linear_wo")
    (after,) = gemm.epilogue
    assert after.kernel.fn.fn.__name__ == "silu_mul_kernel"
    glu = [alt for alt in gemm.alternatives if len(alt["steps"]) == 1]
    assert all(alt["steps"][-1] is after for alt in gemm.alternatives if alt not in glu)
    small = [cfg for cfg in quant_gemm.WO_MMA if cfg[5] <= quant_gemm.SMALL_M]
    # Then the rounded-first ones again at fewer programs an SM, each also with it inside.
    fewer = [cfg for cfg in small if not cfg[6]] * len(quant_gemm.MMA_FEWER_PER_SM)
    assert len(glu) == (len(small) + len(fewer) if bits == 4 else 0)
    for alt, cfg in zip(glu, small + fewer):
        main = alt["steps"][0]
        c = main.kernel.constexprs
        assert main.kernel.fn.fn.__name__ == "wo_mma_kernel" and alt["max_m"] == cfg[5]
        assert (c["GLU"], c["ACT_STRIDE"], c["BLOCK_N"], c["SCALE_AFTER"]) == (
            True, I, cfg[0], cfg[6])
        assert main.to_json()["args"][9] == {"arena": 4096 * 16}  # act_ptr: the SiLU-mul's out
    mmas = [alt["steps"][0] for alt in gemm.alternatives
            if alt not in glu and alt["steps"][0].kernel.fn.fn.__name__ == "wo_mma_kernel"]
    assert len(mmas) == (len(quant_gemm.WO_MMA) + len(fewer) if bits == 4 else 0)
    assert all(not m.kernel.constexprs["GLU"] for m in mmas)


def test_gemm_shapes_are_picked_per_step_by_row_count(lowered):
    w8a8 = steps_of(lowered, "linear_w8a8")
    assert [s.when for s in w8a8] == ["T <= 16", "T > 16"]
    assert [s.grid for s in w8a8] == [("cdiv(T, 16)", "32", "1"), ("cdiv(T, 128)", "8", "1")]



def test_linear_wo_is_cublaslt_on_the_dequantized_weight_with_gemv_splitk_and_mma(lowered):
    awq, wo8 = steps_of(lowered, "linear_wo")
    assert isinstance(awq, Gemm) and isinstance(wo8, Gemm)
    plan = awq.to_json()
    alternatives, prologue = plan.pop("alternatives"), plan.pop("prologue")
    # cuBLASLt multiplies x * pre_quant_scale by the weight, both written to scratch first.
    assert plan == {
        "kind": "gemm", "label": awq.label, "a": {"scratch": "wo_scaled_x"},
        "w": {"scratch": "wo_dequantized_weight"}, "out": {"arena": awq.out["arena"]},
        "bias": None, "m": "T", "n": I, "k": H, "lda": H, "ldc": I, "dtype": DT}
    scale, dequant = awq.prologue
    assert scale.kernel.fn.fn.__name__ == "scale_cols_kernel"
    assert scale.grid == ("T", "1", "1") and scale.args[0] == {"scratch": "wo_scaled_x"}
    assert dequant.kernel.fn.fn.__name__ == "wo_dequant_kernel"
    assert dequant.args[:4] == [{"scratch": "wo_dequantized_weight"}, {"weight": "awq.weight"},
                                {"weight": "awq.weight_scale"}, {"weight": "awq.weight_offset"}]
    assert [prologue[i]["kernel"] for i in (0, 1)] == [scale.kernel.key, dequant.kernel.key]
    # The GEMV for 1 row (in three shapes), 2 rows and groups of 4 rows up to 16, split-K for
    # up to 16, then the tensor-core kernel in its three shapes for up to 8 or 16 rows, five
    # with the scales after the MMAs, and three for more (row blocks of 32 and 64); then the
    # first three again with K split for 4, then 2 programs an SM.
    assert [a["max_m"] for a in alternatives] == [1, 1, 1, 2, 16, 16, 8, 8, 16, 8, 8, 8, 8, 16,
                                                  32, 256, 256] + [8, 8, 16] * 2
    gemvs = [alt["steps"][0] for alt in awq.alternatives[:5]]
    assert [g.kernel.constexprs["ROWS"] for g in gemvs] == [1, 1, 1, 2, 4]
    assert [g.kernel.constexprs["BLOCK_W"] for g in gemvs] == [H // 8] * 5  # K / 8 words: one tile
    assert [g.grid for g in gemvs] == [("cdiv(T, 1)", "64", "1")] * 3 + [
        ("cdiv(T, 2)", "64", "1"), ("cdiv(T, 4)", "64", "1")]
    assert all(g.kernel.fn.fn.__name__ == "wo_gemv_kernel" and g.when is None for g in gemvs)
    c = gemvs[0].kernel.constexprs
    assert (c["BITS"], c["GROUP"], c["HAS_OFFSET"], c["HAS_PQS"], c["HAS_BIAS"]) == \
        (4, 128, True, True, False)
    small, reduce = awq.alternatives[5]["steps"]
    splits = small.grid[2]
    assert lowered.derived[splits] == "max(1, min(16, 2, cdiv(2 * NSM, 8)))"
    assert small.grid == ("1", "8", splits) and small.when is None
    assert reduce.when == f"{splits} > 1" and {"i32": splits} in small.args
    awq_c = small.kernel.constexprs
    assert (awq_c["BITS"], awq_c["GROUP"], awq_c["HAS_OFFSET"], awq_c["HAS_PQS"],
            awq_c["PER_STEP"]) == (4, 128, True, True, True)
    fewer = [alt["steps"][0] for alt in awq.alternatives[17:]]
    assert [m.kernel for m in fewer] == [alt["steps"][0].kernel
                                         for alt in awq.alternatives[6:9]] * 2
    assert [lowered.derived[m.grid[2]] for m in fewer] == [
        f"max(1, min(16, 1, cdiv({per_sm} * NSM, {I // bn} * cdiv(max(1, T), {bm})), "
        f"256 // max(1, T)))" for per_sm in (4, 2) for bn, bm in ((64, 8), (32, 8), (64, 16))]
    mmas = [alt["steps"] for alt in awq.alternatives[6:17]]
    assert all(len(steps) == 1 for steps in mmas)
    mmas = [steps[0] for steps in mmas]
    assert all(m.kernel.fn.fn.__name__ == "wo_mma_kernel" and m.when is None for m in mmas)
    block_m = [8, 8, 16, 8, 8, 8, 8, 16, 32, 64, 64]
    block_n = [64, 32, 64, 32, 64, 64, 128, 64, 64, 64, 128]
    assert [m.grid[:2] for m in mmas] == [
        (f"cdiv(T, {bm})", str(I // bn)) for bm, bn in zip(block_m, block_n)]
    assert all({"i32": m.grid[2]} in m.args for m in mmas)
    # S: about six programs an SM, at most one per step of K (256: 1 step of 64 halfwords, 2
    # of 32: a group a step where the scales come after), S * M within the partials' scratch
    # (16 splits of 16 rows).
    assert [lowered.derived[m.grid[2]] for m in mmas] == [
        f"max(1, min(16, {steps}, cdiv(6 * NSM, {blocks} * cdiv(max(1, T), {bm})), "
        f"256 // max(1, T)))"
        for steps, blocks, bm in zip([1, 1, 1, 2, 2, 1, 2, 1, 2, 2, 2],
                                     [I // bn for bn in block_n], block_m)]
    c = mmas[0].kernel.constexprs
    # K = 256: one step of 64 halfwords, two groups of 128.
    assert (c["GROUP"], c["BLOCK_H"], c["BLOCK_M"], c["BLOCK_N"], c["HAS_OFFSET"], c["HAS_PQS"],
            c["ASM"], c["SCALE_AFTER"]) == (128, 64, 8, 64, True, True, True, False)
    assert [m.kernel.constexprs["SCALE_AFTER"] for m in mmas] == [False] * 3 + [True] * 5 + [
        False] * 3
    # Scales after the MMAs: steps of one group (32 halfwords) or two, parts of one group.
    assert [(m.kernel.constexprs["BLOCK_H"], m.kernel.constexprs["PART_H"])
            for m in mmas[3:8]] == [(32, 32), (32, 32), (64, 32), (32, 32), (64, 32)]
    assert mmas[0].args[:3] == [{"arena": awq.out["arena"]}, {"scratch": "quant_gemm_partials"},
                                {"scratch": "wo_mma_counts"}]
    assert lowered.zeroed_scratch == {"wo_mma_counts"}
    # int8 per channel without a pre-quant scale: x goes to cuBLASLt as it is.
    assert wo8.a == {"input": "x"} and wo8.lda == H
    assert [p.kernel.fn.fn.__name__ for p in wo8.prologue] == ["wo_dequant_kernel"]
    assert wo8.alternatives[0]["steps"][0].kernel.constexprs["BITS"] == 8
    assert lowered.scratch_sizes == {
        "quant_gemm_partials": [str(16 * 16 * I * 4), str(16 * 16 * H * 4)],
        "wo_scaled_x": [str(64 * H * 2)],
        "wo_dequantized_weight": [str(I * H * 2), str(H * H * 2)],
        "wo_mma_counts": [str(4 * (I // 64) * 4)]}  # the most blocks: 64 x 64 up to 256 rows


def test_kernels_compile_for_their_gpus(lowered, tmp_path, monkeypatch):
    """Every specialization compiles to a cubin for sm_90; the integer ones also for sm_80
    (fp8 needs sm_89, as QuantMode's min_sm says)."""
    monkeypatch.setenv("KILN_KERNEL_CACHE", str(tmp_path))
    specs = {launch.kernel.key: launch.kernel for s in lowered.program
             for launch in (s.launches() if isinstance(s, Gemm) else [s])}
    for spec in specs.values():
        fp8 = any(t == "*fp8e4nv" for t in spec.signature.values())
        for sm in ([90] if fp8 else [90, 80]):
            compiled = aot.compile_spec(spec, sm, use_cache=False)
            assert aot.cubin_sm(compiled.cubin) == sm and compiled.meta["shared"] >= 0
