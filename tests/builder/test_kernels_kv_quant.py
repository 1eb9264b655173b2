"""compile_plan with a quantized KV cache (--kv-cache-dtype fp8 / int8) on a CPU-only machine:
the header records the cache's storage dtype, and the KV write and attention kernels take a
cache of that type plus the layer's calibrated k_scale / v_scale weights as float32 pointers."""
import importlib
import re

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kiln_testing import make_tiny_checkpoint  # noqa: E402

from kiln.builder.checkpoint import open_checkpoint  # noqa: E402
from kiln.builder.kernels import compile_plan  # noqa: E402
from kiln.builder.kernels.attention import LONG_SPLIT_TOKENS  # noqa: E402
from kiln.builder.kernels.symbols import evaluate  # noqa: E402
from kiln.builder.models import BuildConfig, ModelConfig, build_graph  # noqa: E402
from kiln.builder.passes import run_pipeline  # noqa: E402
from kiln.quantize.calibration import Calibration  # noqa: E402

KV_KERNELS = ("rope_kv_kernel", "paged_attention_kernel", "paged_decode_kernel")
# kv_cache_dtype -> (targets, header dtype, Triton pointer type, KV_QUANT)
MODES = {"auto": ([80, 90], "bfloat16", "*bf16", 0),
         "fp8": ([89, 90], "float8_e4m3fn", "*fp8e4nv", 1),
         "int8": ([80, 90], "int8", "*i8", 2)}


class FixedCalibrator:
    """KV scales only: layer i gets k_scale 0.01 * (i + 1) and v_scale 0.02 * (i + 1)."""

    def calibrate(self, graph, build) -> Calibration:
        layers = {n.attrs["layer"] for n in graph.nodes if n.op == "attention"}
        return Calibration(kv_scales={i: (torch.tensor([0.01 * (i + 1)]),
                                          torch.tensor([0.02 * (i + 1)])) for i in layers})


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KILN_KERNEL_CACHE", str(tmp_path_factory.getbasetemp() / "kv-kernels"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def compiled(checkpoint, kv: str):
    build = BuildConfig(dtype="bfloat16", max_batch_size=4, max_seq_len=128, max_num_tokens=64,
                        tokens_per_block=16, targets=MODES[kv][0], kv_cache_dtype=kv,
                        calibrator=FixedCalibrator())
    with open_checkpoint(checkpoint) as ckpt:
        graph = run_pipeline(build_graph(ModelConfig.from_hf(ckpt.hf_config), build, ckpt), build)
    return graph, compile_plan(graph, build).header


def runtime_args(header, step) -> dict:
    """A launch's JSON arguments by parameter name."""
    sig = header["kernels"][step["kernel"]]["signature"]
    return dict(zip([n for n, t in sig.items() if t != "constexpr"], step["args"]))


@pytest.mark.parametrize("kv", list(MODES))
def test_kv_cache_dtype_reaches_header_and_kernels(checkpoint, kv):
    targets, dtype, pointer, quant = MODES[kv]
    graph, header = compiled(checkpoint, kv)
    assert header["kv_cache"] == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16,
                                  "tokens_per_block": 16, "dtype": dtype}
    assert header["dtype"] == "bfloat16" and header["targets"] == targets
    launches = {}
    for step in header["program"]:
        if step["kind"] != "kernel":
            continue
        entry = header["kernels"][step["kernel"]]
        fn = entry["fn"].rsplit(".", 1)[1]
        if fn not in KV_KERNELS:
            continue
        sig, args = entry["signature"], runtime_args(header, step)
        layer = args["k_cache_ptr"]["kv"]
        launches.setdefault(fn, []).append(layer)
        assert entry["constexprs"]["KV_QUANT"] == quant
        assert (sig["k_cache_ptr"], sig["v_cache_ptr"]) == (pointer, pointer)
        assert (args["k_cache_ptr"], args["v_cache_ptr"]) == ({"kv": layer, "half": 0},
                                                              {"kv": layer, "half": 1})
        assert set(entry["sm"]) == {str(sm) for sm in targets}
        if quant:
            assert (sig["k_scale_ptr"], sig["v_scale_ptr"]) == ("*fp32", "*fp32")
            assert args["k_scale_ptr"] == {"weight": f"layers.{layer}.k_scale"}
            assert args["v_scale_ptr"] == {"weight": f"layers.{layer}.v_scale"}
            assert graph.values[f"layers.{layer}.k_scale"].kind == "weight"
        else:  # not read: any pointer will do, the cache's own
            assert (args["k_scale_ptr"], args["v_scale_ptr"]) == (args["k_cache_ptr"],
                                                                  args["v_cache_ptr"])
    # An 8-bit cache's decode kernel: four launches a layer, the step's symbols pick one.
    thrice = bool(quant)
    assert launches == {fn: [0, 0, 0, 0, 1, 1, 1, 1] if thrice and fn == "paged_decode_kernel"
                        else [0, 1] for fn in KV_KERNELS}
    decodes = [s for s in header["program"] if s["kind"] == "kernel" and header["kernels"][
        s["kernel"]]["fn"].endswith(".paged_decode_kernel")]
    configs = [(header["kernels"][s["kernel"]]["constexprs"]["TILE"],
                header["kernels"][s["kernel"]]["num_warps"],
                header["kernels"][s["kernel"]]["num_stages"], s.get("when")) for s in decodes[:4]]
    splits = decodes[0]["grid"][2]
    if thrice:
        # Unsplit contexts: 32 keys a step on one warp (a 16 x 16 accumulator), or for long
        # ones on two where those programs' waves pad fewer (resident symbols: how many
        # programs of each the GPU runs at once); short split ones 64 on 4 warps; long splits
        # 64 on 2 warps, 3 stages.
        long = decodes[2]["when"].split(" == ")[0]
        assert dict(header["derived"])[long] == (f"cdiv(MAXCTX, {splits}) >= "
                                                 f"{LONG_SPLIT_TOKENS}")
        rn, rw = (name for name, _ in header["resident"])
        assert header["resident"] == [[rn, decodes[0]["kernel"]], [rw, decodes[3]["kernel"]]]
        wide = (f"{long} == 1 and {splits} == 1 and cdiv(BD * 2, {rw}) * {rw} < "
                f"cdiv(BD * 2, {rn}) * {rn}")
        assert configs == [(32, 1, 2, f"({splits} == 1) and not ({wide})"),
                           (64, 4, 2, f"{long} == 0 and {splits} > 1"),
                           (64, 2, 3, f"{long} == 1 and {splits} > 1"),
                           (32, 2, 2, wide)]
        # Exactly one of them runs in any step; the wide one only for long unsplit steps
        # whose programs (BD x 2) fill its waves better: with 12 and 8 slots, 7 or 12 sequences
        # (14 programs: 24 slots against 16; 24: 24 against 24).
        for a, b, bd in ((a, b, bd) for a in (0, 1) for b in (1, 2, 32) for bd in (7, 12)):
            values = {long: a, splits: b, "BD": bd, rn: 12, rw: 8}
            assert sum(evaluate(w, values) for *_, w in configs) == 1
            assert evaluate(wide, values) == (a == 1 and b == 1 and bd == 7)
    else:
        assert configs[0] == (64, 4, 2, None)
    # Whatever the launch's tile, a split holds 64 keys or more: the context splits no finer.
    assert dict(header["derived"])[splits].endswith("cdiv(MAXCTX, 64)))")


@pytest.mark.parametrize("kv", ["fp8", "int8"])
def test_8bit_cache_v_tiles_reach_shared_memory_in_wide_copies(checkpoint, kv):
    """The plan's decode kernel over an 8-bit cache (V transposed in each block,
    rope.v_transposed), compiled for sm_90 as the plan records it: V's tiles reach shared memory
    in cp.async copies as wide as the tile allows, and no thread gathers V from it a byte at a
    time."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _, header = compiled(checkpoint, kv)
    entries = [e for e in header["kernels"].values() if e["fn"].endswith(".paged_decode_kernel")]
    assert len(entries) == 4  # unsplit (narrow and wide), short split and long-split launches
    for entry in entries:
        module, name = entry["fn"].rsplit(".", 1)
        src = ASTSource(fn=getattr(importlib.import_module(module), name),
                        signature=entry["signature"], constexprs=dict(entry["constexprs"], PDL=0),
                        attrs={(i,): [["tt.divisibility", 16]] for i in entry["divisible"]})
        asm = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": entry["num_warps"],
                                      "num_stages": entry["num_stages"],
                                      "enable_fp_fusion": True}).asm  # as aot.compile_spec
        ptx = asm["ptx"]
        # V's tile (_attend's v_t) copied as wide as it allows: 16 bytes, or its bytes over
        # the threads when fewer
        c = entry["constexprs"]
        width = min(16, c["DIM_PAD"] * c["TILE"] // (32 * entry["num_warps"]))
        v_copies = re.findall(r"%v_t\w* = ttg\.async_copy_global_to_local .*"
                              r"\{contiguity = (\d+) : i32\}", asm["ttgir"])
        assert "mma.sync" in ptx and v_copies and {int(n) for n in v_copies} == {width}
        assert "ld.shared.b8" not in ptx and "ld.shared.u8" not in ptx


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8, torch.bfloat16])
def test_direct_launches_take_v_in_the_layout_the_cache_stores(dtype):
    """An 8-bit V plane is stored [num_blocks, nkv, head_dim, tokens_per_block]
    (rope.v_transposed); a direct launch given it in K's layout says so, before any kernel
    runs, and v_cache_stored / v_cache_view convert between the two."""
    from kiln.builder.kernels import rope
    k = torch.zeros((3, 2, 16, 32), dtype=dtype)
    v = torch.arange(3 * 2 * 16 * 32).reshape(3, 2, 16, 32).remainder(100).to(dtype)
    stored = rope.v_cache_stored(v)
    assert torch.equal(rope.v_cache_view(stored).float(), v.float())
    if dtype.itemsize == 1:
        assert stored.shape == (3, 2, 32, 16) and stored.is_contiguous()
        x = torch.zeros((1, 2 * 32), dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="pass V through v_cache_stored"):
            rope.rope_kv(x, x, x, torch.zeros(1, dtype=torch.int32),
                         torch.zeros(1, dtype=torch.int64), k, v, torch.zeros(16), 32,
                         k_scale=torch.ones(1), v_scale=torch.ones(1))
    else:
        assert stored is v
    rope.check_cache_layout(k, stored, 32)
