"""compile_plan on a CPU-only machine: cubins for sm_80/89/90 with launch metadata, a program
that references only what the header defines, and the build cache."""
import importlib
import json

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from kiln_testing import make_tiny_checkpoint  # noqa: E402

from kiln.builder.checkpoint import open_checkpoint  # noqa: E402
from kiln.builder.kernels import aot, compile_plan, gemm, pdl  # noqa: E402
from kiln.builder.kernels.gemm import GEMV_CONFIGS, SMALL_CONFIGS  # noqa: E402
from kiln.builder.kernels.symbols import STEP_SYMBOLS, evaluate  # noqa: E402
from kiln.builder.models import BuildConfig, ModelConfig, build_graph  # noqa: E402
from kiln.builder.passes import run_pipeline  # noqa: E402

TARGETS = [80, 89, 90]


def plan_for(tmp_path_factory, arch: str, dtype: str, max_num_tokens: int = 64):
    path = make_tiny_checkpoint(arch, tmp_path_factory.mktemp(arch))
    build = BuildConfig(dtype=dtype, max_batch_size=4, max_seq_len=128,
                        max_num_tokens=max_num_tokens, tokens_per_block=16, targets=TARGETS)
    with open_checkpoint(path) as ckpt:
        model = ModelConfig.from_hf(ckpt.hf_config)
        return run_pipeline(build_graph(model, build, ckpt), build), build


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernel-cache")


@pytest.fixture(autouse=True)
def private_cache(cache, monkeypatch):
    monkeypatch.setenv("KILN_KERNEL_CACHE", str(cache))


@pytest.mark.parametrize("arch,dtype", [("llama", "bfloat16"), ("qwen3", "float16"),
                                        ("qwen2", "float32"), ("gemma2", "bfloat16")])
def test_compile_plan_makes_cubins_for_every_target(tmp_path_factory, arch, dtype):
    graph, build = plan_for(tmp_path_factory, arch, dtype)
    bundle = compile_plan(graph, build)
    header = bundle.header
    json.dumps(header)  # the header is JSON-able as it stands
    assert header["targets"] == TARGETS and header["dtype"] == dtype
    kernels = header["kernels"]
    fns = {k["fn"].rsplit(".", 1)[1] for k in kernels.values()}
    act_mul = "gelu_tanh_mul_kernel" if arch.startswith("gemma") else "silu_mul_kernel"
    assert {"gather_rows_kernel", "rmsnorm_kernel", "rope_kv_kernel",
            "paged_attention_kernel", "paged_decode_kernel", "paged_decode_reduce_kernel",
            act_mul, "cast_kernel"} <= fns
    if not arch.startswith("gemma"):  # every residual add inside the o and down GEMMs
        assert "add_rmsnorm_kernel" not in fns
    if arch == "qwen3":
        assert "head_rmsnorm_kernel" in fns
    if arch == "gemma2":  # scaled embeddings, GELU-tanh MLP, softcapped scores and logits
        assert {"unary_kernel", "gelu_tanh_mul_kernel"} <= fns
        assert {k["constexprs"]["SOFTCAP"] for k in kernels.values()
                if k["fn"].endswith("paged_attention_kernel")} == {5.0}
    for entry in kernels.values():
        runtime = [n for n, t in entry["signature"].items() if t != "constexpr"]
        # A Hopper kernel (min_sm 90: the TMA GEMM) has binaries for the targets it runs on.
        assert set(entry["sm"]) == {str(sm) for sm in TARGETS if sm >= entry.get("min_sm", 0)}
        assert ("min_sm" in entry) == entry["fn"].endswith("tma_gemm_kernel")
        for sm, meta in entry["sm"].items():
            cubin = bundle.blobs[meta["blob"]]
            assert aot.cubin_sm(cubin) == int(sm)
            assert meta["num_warps"] == entry["num_warps"] and meta["shared"] >= 0
            # Every plan kernel waits on its predecessor first where the target has PDL.
            assert meta["pdl"] == pdl.enabled(int(sm)) == (int(sm) >= 90)
            # Triton appends scratch pointers after the signature's runtime parameters.
            assert len(meta["params"]) == len(runtime) + meta["num_extra_params"]
            assert meta["params"][len(runtime):] == ["u64"] * meta["num_extra_params"]
            # TMA descriptors made in the kernel: 128 bytes each in Triton's global scratch.
            assert meta["global_scratch_size"] == (384 if "min_sm" in entry else 0)
            for name, ptx in zip(runtime, meta["params"]):
                t = entry["signature"][name]
                assert ptx == {"i32": "u32", "fp32": "f32"}.get(t, "u64"), (name, t, ptx)
    assert set(bundle.blobs) == {m["blob"] for e in kernels.values() for m in e["sm"].values()}


def test_program_references_resolve(tmp_path_factory):
    graph, build = plan_for(tmp_path_factory, "llama", "bfloat16")
    header = compile_plan(graph, build).header
    symbols = dict(T=64, B=4, MAXCTX=128, MAXQ=16, MAXBLK=8, NSM=132, BD=2, LOGITS=1)
    for name, _ in header["resident"]:
        symbols[name] = 132 * 8
    for name, formula in header["derived"]:
        symbols[name] = evaluate(formula, symbols)
    weights = set(graph.of_kind("weight"))
    gemms = 0
    tma = 0
    folded = 0
    residuals = 0
    epilogues = []
    for step in header["program"]:
        alternatives = [a for alt in step.get("alternatives", []) for a in alt["steps"]]
        alternatives += step.get("prologue", []) + step.get("epilogue", [])
        refs = [step["a"], step["w"], step["out"]] + ([step["bias"]] if step["bias"] else []) \
            + ([step["residual"]] if step.get("residual") else []) \
            + [arg for a in alternatives for arg in a["args"]] \
            if step["kind"] == "gemm" else step["args"]
        for a in alternatives:
            assert a["kernel"] in header["kernels"] and a["when"] is None
            assert all(evaluate(g, symbols) >= 1 for g in a["grid"])
        for ref in refs:
            if "arena" in ref:
                assert 0 <= ref["arena"] < header["arena_bytes"]
            elif "weight" in ref:
                assert ref["weight"] in weights
            elif "input" in ref:
                assert ref["input"] in header["step_inputs"]
            elif "const" in ref:
                assert ref["const"] in header["constants"]
            elif "scratch" in ref:
                assert ref["scratch"] in header["scratch"]
            elif "kv" in ref:
                assert 0 <= ref["kv"] < header["kv_cache"]["num_layers"] and ref["half"] in (0, 1)
            elif "i32" in ref:
                assert evaluate(ref["i32"], symbols) >= 0
            else:
                assert set(ref) == {"f32"}
        if step["kind"] == "gemm":
            gemms += 1
            assert evaluate(step["m"], symbols) in (64, 4)
            prologue, epilogue = step.get("prologue", []), step.get("epilogue", [])
            # The small-M alternatives, then the one-row ones. A kernel folded into the GEMM
            # (the norms before qkv, gate_up and the LM head) is cuBLASLt's prologue, first in
            # each small-M alternative and inside the one-row kernel, which is also offered
            # after that kernel's own launch; gate_up's SiLU-mul is cuBLASLt's epilogue, and
            # each small-M and one-row configuration comes with it inside (GLU) and before its
            # launch. In this 16-bit build the gate/up rows come in pairs: GLU_PAIRS.
            fn = lambda s: header["kernels"][s["kernel"]]["fn"].rsplit(".", 1)[1]  # noqa: E731
            before = fn(prologue[0]) if prologue else None
            kinds = {None: gemm.PLAIN, "rmsnorm_kernel": gemm.NORM,
                     "add_rmsnorm_kernel": gemm.ADD_NORM}
            ways = ([(gemm.GLU_PAIRS, []), (gemm.NO_GLU, epilogue)] if epilogue
                    else [(gemm.NO_GLU, [])])
            want = [(prologue, "small_m_gemm_kernel", post, None, glu)
                    for _ in SMALL_CONFIGS for glu, post in ways]
            for pre, kind in [([], before)] + ([(prologue, None)] if prologue else []):
                want += [(pre, "gemv_kernel", post, int(kinds[kind]), glu)
                         for _ in GEMV_CONFIGS for glu, post in ways]
            # Then, for a gate/up GEMM that fits its tiles, the alternative for many rows
            # (tma_gemm.py): the GLU over the pairs.
            many = [alt for alt in step["alternatives"] if "min_m" in alt]
            tma_ways = [(1, [])]
            if many:
                main = [a["steps"][len(prologue)] for a in many]
                assert [(a["steps"][:len(prologue)], fn(s), a["steps"][len(prologue) + 1:],
                         header["kernels"][s["kernel"]]["constexprs"]["GLU"], a["min_m"],
                         a["max_m"], s["global_scratch"]) for a, s in zip(many, main)] \
                    == [(prologue, "tma_gemm_kernel", post, glu, 17, 64, "triton_global_scratch")
                        for glu, post in tma_ways]
                # Preferred from more rows than this build's steps take: not marked.
                assert not any("preferred_from_m" in a for a in step["alternatives"])
                tma += 1
            got = []
            for alt in step["alternatives"][:len(step["alternatives"]) - len(many)]:
                i = next(j for j, s in enumerate(alt["steps"])
                         if fn(s) in ("small_m_gemm_kernel", "gemv_kernel"))
                main = alt["steps"][i]
                c = header["kernels"][main["kernel"]]["constexprs"]
                got.append((alt["steps"][:i], fn(main), alt["steps"][i + 1:], c.get("PROLOGUE"),
                            c.get("GLU")))
            assert got == want
            small = len(SMALL_CONFIGS) * len(ways)
            assert [alt["max_m"] for alt in step["alternatives"]] \
                == [16] * small + [1] * (len(want) - small) + [64] * len(many)
            folded += bool(prologue)
            residuals += "residual" in step
            epilogues += [fn(e) for e in epilogue]
        else:
            assert step["kernel"] in header["kernels"]
            assert all(evaluate(g, symbols) >= 1 for g in step["grid"])
    assert gemms == 4 * header["kv_cache"]["num_layers"] + 1  # qkv, o, gate_up, down; lm_head
    assert folded == 2 * header["kv_cache"]["num_layers"] + 1
    # The o and down projections add the residual themselves (fold_residual_into_linears).
    assert residuals == 2 * header["kv_cache"]["num_layers"]
    # Of this tiny model's GEMMs only gate_up (N 256, K 64) fits the TMA GEMM's tiles.
    assert tma == header["kv_cache"]["num_layers"]
    assert header["scratch"]["triton_global_scratch"] == ["384 * (NSM)"]
    assert epilogues == ["silu_mul_kernel"] * header["kv_cache"]["num_layers"]
    assert not any(fn in header["kernels"][s["kernel"]]["fn"] for fn in ("norm", "silu_mul")
                   for s in header["program"] if s["kind"] == "kernel")
    assert set(STEP_SYMBOLS) <= set(symbols)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_greedy_pick_reads_the_lm_head_output(tmp_path_factory, dtype):
    """A 16-bit build's greedy pick reads the LM head's output, and the cast of it to the float32
    logits runs only in steps whose logits the host reads (LOGITS); a float32 build's pick
    reads the logits output, written every step."""
    graph, build = plan_for(tmp_path_factory, "llama", dtype)
    header = compile_plan(graph, build).header

    def args(step):
        sig = header["kernels"][step["kernel"]]["signature"]
        return dict(zip([n for n, t in sig.items() if t != "constexpr"], step["args"]))

    def launches(name):
        return [s for s in header["program"] if s["kind"] == "kernel"
                and header["kernels"][s["kernel"]]["fn"].endswith("." + name)]

    picks = launches("greedy_kernel") + launches("greedy_partial_kernel")
    read = [args(s)["logits_ptr"] for s in picks]
    logits = header["outputs"]["logits"]["ref"]
    casts = launches("cast_kernel")
    if dtype == "bfloat16":
        assert [s["when"] for s in casts] == ["LOGITS > 0"]
        after = header["program"][header["program"].index(casts[0]) + 1:]
        assert len(after) == 3 and all(  # nothing but the pick runs after it
            header["kernels"][s["kernel"]]["fn"].rsplit(".", 1)[1].startswith("greedy_")
            for s in after)
        assert len(picks) == 2 and read == [args(casts[0])["x_ptr"]] * 2 and read[0] != logits
    else:
        assert all(s["when"] is None for s in casts)
        assert len(picks) == 2 and read == [logits] * 2


def test_second_compile_hits_the_cache(tmp_path_factory, monkeypatch):
    graph, build = plan_for(tmp_path_factory, "llama", "float16")
    first = compile_plan(graph, build)

    def no_compile(*args, **kwargs):
        raise AssertionError("triton.compile called although every kernel is cached")

    monkeypatch.setattr(aot.triton, "compile", no_compile)
    second = compile_plan(graph, build)
    assert second.header == first.header and second.blobs == first.blobs


def test_threads_compile_what_one_thread_would(tmp_path_factory, monkeypatch):
    """What the cache lacks compiles on several threads (two here, whatever the machine): the
    same cubins and metadata as compile_spec one at a time, in the jobs' order, the cache
    filled, and cached entries read rather than compiled."""
    from kiln.builder.kernels.lower import kernels_of, lower
    graph, build = plan_for(tmp_path_factory, "qwen3", "bfloat16")
    jobs = [(spec, 90) for spec in list(kernels_of(lower(graph, build)).values())[:6]]
    monkeypatch.setenv("KILN_KERNEL_CACHE", str(tmp_path_factory.mktemp("threads")))
    monkeypatch.setattr(aot, "compile_workers", lambda: 2)
    here = [aot.compile_spec(spec, sm, use_cache=False) for spec, sm in jobs]
    aot.compile_spec(*jobs[2])  # one already cached
    done = []
    there = aot.compile_specs(jobs, progress=lambda d, t: done.append((d, t)))
    assert [(c.cubin, c.meta) for c in there] == [(c.cubin, c.meta) for c in here]
    assert [c.cached for c in there] == [i == 2 for i in range(len(jobs))]
    assert done[0] == (1, len(jobs)) and done[-1] == (len(jobs), len(jobs))
    assert all(aot.cached(spec, sm) is not None for spec, sm in jobs)


def test_no_triton_gives_an_empty_bundle(tmp_path_factory, monkeypatch):
    import kiln.builder.kernels as kernels

    graph, build = plan_for(tmp_path_factory, "llama", "float16")
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    bundle = kernels.compile_plan(graph, build)
    assert bundle.header == {} and bundle.blobs == {}


def test_every_kernel_takes_pdl_and_enters_first():
    """A kernel without PDL would be launched serially; one that takes it must wait before
    touching memory (compile_spec checks in the PTX that it waits at all), but for those of
    pdl.WEIGHTS_FIRST, which may read their weight, and only it, before."""
    import triton
    names = ["attention", "elementwise", "gather", "gemm", "norm", "quant", "quant_gemm", "rope",
             "sampling"]
    kernels = [fn for name in names
               for attr, fn in vars(importlib.import_module(f"kiln.builder.kernels.{name}")).items()
               if attr.endswith("_kernel") and isinstance(fn, triton.runtime.JITFunction)]
    assert len(kernels) >= 20
    assert pdl.HOLD <= {fn.fn.__name__ for fn in kernels}
    for fn in kernels:
        name = fn.fn.__name__
        assert pdl.mode(80, name) == pdl.OFF
        assert pdl.mode(90, name) == (pdl.WAIT if name in pdl.HOLD else pdl.WAIT_AND_RELEASE)
    for fn in kernels:
        assert fn.arg_names[-1] == pdl.PARAM, fn.fn.__name__
        body = fn.src.split(":\n", 1)[1].lstrip()
        if body.startswith('"""'):
            body = body.split('"""', 2)[2].lstrip()
        if fn.fn.__name__ not in pdl.WEIGHTS_FIRST:
            assert body.startswith("enter(PDL)"), fn.fn.__name__
            continue
        before = body.split("\n    enter(PDL)\n", 1)[0]
        assert before != body, fn.fn.__name__
        others = [a for a in fn.arg_names if a.endswith("_ptr") and a != "w_ptr"]
        assert "w_ptr" in before and not [a for a in others if a in before], fn.fn.__name__


def test_a_kernel_that_never_waits_is_refused():
    import triton
    import triton.language as tl

    from kiln.builder.kernels.spec import Ptr, kernel_spec

    @triton.jit
    def forgets_to_wait(out_ptr, PDL: tl.constexpr = 0):
        tl.store(out_ptr, 1)

    spec, _ = kernel_spec(forgets_to_wait, {"out_ptr": Ptr({"arena": 0}, "int32")}, {}, num_warps=1)
    assert not aot.compile_spec(spec, 80, use_cache=False).meta["pdl"]
    with pytest.raises(RuntimeError, match="never waits on its predecessor"):
        aot.compile_spec(spec, 90, use_cache=False)


def test_glu_kernel_preferred_from_its_rows_where_the_build_takes_them(tmp_path_factory):
    """The gate/up GEMM's GLU kernel is marked preferred from tma_gemm.PREFERRED_FROM_M rows in
    a build whose steps take that many (the executor then runs it there untimed against
    cuBLASLt); no other alternative is."""
    from kiln.builder.kernels import tma_gemm
    from kiln.builder.kernels.lower import lower, program_json
    graph, build = plan_for(tmp_path_factory, "llama", "bfloat16", tma_gemm.PREFERRED_FROM_M)
    program = program_json(lower(graph, build))
    preferred = [(step["label"], alt["min_m"], alt["max_m"], alt["preferred_from_m"])
                 for step in program if step["kind"] == "gemm"
                 for alt in step.get("alternatives", []) if "preferred_from_m" in alt]
    gate_ups = sum(1 for step in program if step["kind"] == "gemm" and "gate_up" in step["label"])
    assert gate_ups >= 1 and len(preferred) == gate_ups
    assert all("gate_up" in label and (low, high, rows) == (tma_gemm.MIN_M, build.max_num_tokens,
                                                           tma_gemm.PREFERRED_FROM_M)
               for label, low, high, rows in preferred)
