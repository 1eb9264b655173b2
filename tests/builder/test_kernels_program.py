"""The GPU program of whole engines (compile_plan's launches and GEMMs), run on the CPU by
tests/gpu/program_emulator.py through Triton's interpreter, against the reference backend:
prefill, chunked prefill mixed with decodes, decodes, and long-context split-KV decodes."""
import json
from pathlib import Path

import pytest

from kiln_testing import run_interpreted

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

RUN = r"""
import json, sys
import numpy as np
import torch
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/gpu"]
from kiln.builder.engine import load_engine
from kiln.runtime.reference import ReferenceBackend
from kiln_testing import PagedSequences
from program_emulator import ProgramEmulator

engine = load_engine(sys.argv[1])
schedule = json.loads(sys.argv[2])
lengths = schedule.pop(0)
build = engine.config.build
blocks = sum(-(-(n + 40) // build.tokens_per_block) for n in lengths) + 2
seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, blocks, seed=3)
gen = torch.Generator().manual_seed(11)
for n in lengths:
    seqs.add(torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist())
alternative = {"none": None}.get(sys.argv[4], sys.argv[4])
alternative = int(alternative) if str(alternative).isdigit() else alternative
ref = ReferenceBackend(engine, blocks)
options = json.loads(sys.argv[6])
if "programs_per_sm" in options:
    options["programs_per_sm"] = {int(k): v for k, v in options["programs_per_sm"].items()}
emu = ProgramEmulator(engine, blocks, gemm_alternative=alternative, **options)
errors = []
picks_only = sys.argv[5] == "1"  # each step first as a greedy step: no float32 logits
for plan in schedule:
    step = seqs.step([tuple(p) for p in plan])
    if picks_only:  # the same step again below writes the same KV values
        assert emu.forward(step, logits=False) is None
        picked = [p.copy() for p in emu.picks]
    a, b = ref.forward(step), emu.forward(step)
    tokens, logprobs = emu.picks
    if picks_only:
        assert (picked[0] == tokens).all() and (picked[1] == logprobs).all(), "picks differ"
    expect = torch.log_softmax(torch.from_numpy(b).double(), -1)
    chosen = expect[torch.arange(len(b)), torch.from_numpy(b).argmax(-1)].numpy()
    errors.append([float(np.linalg.norm(b.astype(np.float64) - a) / np.linalg.norm(a)),
                   bool((a.argmax(-1) == b.argmax(-1)).all()),
                   bool((tokens == b.argmax(-1)).all()), float(np.abs(logprobs - chosen).max())])
    for row, (sid, _) in enumerate(plan):
        if seqs.computed[sid] == len(seqs.tokens[sid]):
            seqs.tokens[sid].append(int(a[row].argmax()))
print(json.dumps({"errors": errors, "launched": emu.launched}))
"""
# Decodes come first, as the scheduler orders them (the decode kernel takes them), except in the
# third step, where a decode after a prompt chunk goes through the flash kernel.
MIXED = [[7, 13, 20, 30], [[0, 7], [1, 6], [2, 10]], [[0, 1], [1, 7], [2, 5]],
         [[1, 1], [2, 5], [0, 1], [3, 30]]] + [[[0, 1], [1, 1], [2, 1], [3, 1]]] * 3
# The quantized engines' schedule: three sequences, decodes first. On MIXED (four sequences) two
# steps of the FP8 + FP8-cache engine come out ~1e-2 off, the same whichever kernel takes the
# mixed steps' decodes; TIE_BOUND and TIE_STEPS allow for such steps.
QUANT_MIXED = [[7, 13, 20], [[0, 7], [1, 6], [2, 10]], [[0, 1], [1, 7], [2, 10]]] + [[[0, 1], [1, 1], [2, 1]]] * 3
SINGLE = [[9], [[0, 9]]] + [[[0, 1]]] * 4  # one sequence: its decode steps are one-row GEMMs
# One sequence of 240 tokens in chunks beside a short one, then decodes whose context
# (> 128 tokens) makes the executor split the KV range (S = 2) and reduce.
LONG = [[240, 5], [[0, 59], [1, 5]]] + [[[0, 64]]] * 2 + [[[0, 53], [1, 1]]] + [[[0, 1], [1, 1]]] * 3
BOUND = {"float32": 1e-5, "float16": 1e-2}  # whole engines: 16-bit roundings add up


def run(engine_dir: Path, schedule, gemm_alternative: int | None = None,
        picks_only_first: bool = False, launched: dict | None = None, **emulator) -> list:
    """`gemm_alternative`: each GEMM runs that alternative (kernels/gemm.py) where M allows.
    `picks_only_first`: each step runs first as a step whose host reads only the greedy picks
    (no float32 logits written), whose picks must equal the full step's. `launched`, when
    given, gains how many times each kernel (by its header key) ran. `emulator`: the
    ProgramEmulator's num_sms and programs_per_sm."""
    tests = str(Path(__file__).parents[1])
    out = run_interpreted(["-c", RUN, str(engine_dir), json.dumps(schedule), tests,
                           str(gemm_alternative).lower(), str(int(picks_only_first)),
                           json.dumps(emulator)])
    if launched is not None:
        launched.update(out["launched"])
    return out["errors"]


@pytest.mark.parametrize("arch,dtype", [("llama", "float32"), ("llama-bias", "float32"),
                                        ("qwen2", "float16"), ("qwen3", "float32"),
                                        ("qwen3", "float16"), ("phi3-longrope", "float32"),
                                        ("mistral-window", "float32"),
                                        ("qwen2-window", "float16"), ("gemma2", "float32"),
                                        ("gemma3", "float16"), ("granite", "float16"),
                                        ("olmo2", "float16"), ("smollm3", "float32"),
                                        ("qwen2-yarn", "float32"), ("glm4", "float16"),
                                        ("exaone4", "float16"), ("ernie4_5", "float32"),
                                        ("cohere2", "float16"), ("starcoder2", "float16"),
                                        ("mixtral", "float32"), ("qwen3_moe", "float16"),
                                        ("olmoe", "float32"), ("qwen2_moe", "float16"),
                                        ("granitemoe", "float16"), ("glm4_moe", "float16"),
                                        ("glm4_moe", "float32"), ("ernie4_5_moe", "float16"),
                                        ("phimoe", "float32")])
def test_program_matches_reference_backend(tiny_engine, arch, dtype):
    _, engine = tiny_engine(arch, dtype, targets=(90,))
    # 16-bit builds: every step also as a greedy step, whose pick reads the LM head's output.
    results = run(engine, MIXED, picks_only_first=dtype == "float16")
    for i, (err, same_argmax, picks_argmax, logprob_err) in enumerate(results):
        assert err < BOUND[dtype], f"step {i}: error {err:.2e}"
        assert same_argmax or dtype != "float32"
        # The program's greedy pick over its own logits: torch.argmax and log_softmax.
        assert picks_argmax and logprob_err < 1e-5, f"step {i}: pick error {logprob_err:.2e}"


@pytest.mark.parametrize("arch,dtype,alternative,schedule", [
    ("llama", "float32", 0, "mixed"), ("llama-bias", "float32", 1, "mixed"),
    ("qwen2", "float16", 0, "mixed"), ("qwen2", "float16", 1, "mixed"),
    ("llama", "float32", 4, "single"), ("llama-bias", "float32", 5, "single"),
    ("qwen2", "float16", 6, "single"), ("qwen3", "float32", 4, "single"),
    ("qwen3", "float16", 5, "single")])
def test_program_small_m_gemm_alternatives(tiny_engine, arch, dtype, alternative, schedule):
    """Decode steps (M <= 16) through the GEMMs' Triton alternatives instead of cuBLASLt; from
    4 on, the one-row alternatives (gemv_kernel) of one sequence's decode steps, which take in
    the norm or SiLU-mul before the GEMM."""
    _, engine = tiny_engine(arch, dtype, targets=(90,))
    for i, (err, same_argmax, picks_argmax, logprob_err) in enumerate(
            run(engine, MIXED if schedule == "mixed" else SINGLE, gemm_alternative=alternative)):
        assert err < BOUND[dtype], f"step {i}: error {err:.2e}"
        assert same_argmax or dtype != "float32"
        assert picks_argmax and logprob_err < 1e-5, f"step {i}: pick error {logprob_err:.2e}"


def test_program_tma_gemm_alternatives(tmp_path, dtype="float16"):
    """Steps of 17 rows and more through the gate/up GEMM's alternative for many rows
    (tma_gemm.py; a layer wide enough for its tiles), writing silu(gate) * up over its rows in
    pairs. In float16: Triton's interpreter multiplies the attention's bfloat16 tiles wrongly."""
    from kiln.builder.build import build_engine
    from kiln.builder.models import BuildConfig
    from kiln_testing import make_tiny_checkpoint
    ckpt = make_tiny_checkpoint("llama", tmp_path / "hf", hidden_size=256,
                                intermediate_size=512, num_attention_heads=4,
                                num_key_value_heads=2)
    build_engine(ckpt, tmp_path / "engine", BuildConfig(
        dtype=dtype, max_batch_size=8, max_seq_len=128, max_num_tokens=64, tokens_per_block=4,
        targets=[90]), progress=False)
    launched = {}
    results = run(tmp_path / "engine", MIXED, gemm_alternative="tma_gemm_kernel",
                  launched=launched)
    for i, (err, _, picks_argmax, logprob_err) in enumerate(results):
        assert err < 2e-2, f"step {i}: error {err:.2e}"
        assert picks_argmax and logprob_err < 1e-5, f"step {i}: pick error {logprob_err:.2e}"
    from kiln.builder.engine import load_engine
    kernels = load_engine(tmp_path / "engine").kernels["kernels"]
    ran = {kernels[key]["constexprs"]["GLU"]: n for key, n in launched.items()
           if kernels[key]["fn"].endswith("tma_gemm_kernel")}
    # The steps of 23 and 37 tokens, the first layer's gate/up (the last layer's takes the last
    # tokens only): the GLU.
    assert ran == {1: 2}


def test_program_long_context_split_kv(tiny_engine):
    _, engine = tiny_engine("llama", "float32", targets=(90,), max_seq_len=256,
                            tokens_per_block=16)
    for i, (err, same_argmax, picks_argmax, logprob_err) in enumerate(run(engine, LONG)):
        assert err < BOUND["float32"] and same_argmax, f"step {i}: error {err:.2e}"
        assert picks_argmax and logprob_err < 1e-5, f"step {i}: pick error {logprob_err:.2e}"


def test_program_long_context_in_a_sliding_window(tiny_engine):
    """Prompt chunks and decodes 240 tokens in, each reading its window's tiles only (window
    16, every layer; the step's split count follows the window: kernel_checks covers split
    windows)."""
    _, engine = tiny_engine("mistral-window", "float32", targets=(90,), max_seq_len=256,
                            tokens_per_block=16)
    for i, (err, same_argmax, picks_argmax, logprob_err) in enumerate(run(engine, LONG)):
        assert err < BOUND["float32"] and same_argmax, f"step {i}: error {err:.2e}"
        assert picks_argmax and logprob_err < 1e-5, f"step {i}: pick error {logprob_err:.2e}"


# Attention's float32 sums are taken in another order than the reference's (about 1e-7
# apart), and RoPE's rotation is a fused multiply-add, rounded once, where the reference rounds
# the products and the sum (as on the GPU; Triton's interpreter does so from 3.9). A value that
# sits that close to an e4m3 rounding boundary lands on the neighbouring code, 1/16 to 1/8 of it
# away, which moves the logits by up to a few 1e-2 (measured 8.7e-3 once in three calibrations
# with an FP8 cache and FP8 activations; 1.24e-2 and 2.26e-2 in two steps of Gemma 3's FP8 case
# under Triton 3.9, whose run first parts from 3.8's in RoPE's kernel). Two such steps are
# allowed where the engine has e4m3 codes; the other steps must agree to 1e-4.
TIE_BOUND = 3e-2
TIE_STEPS = 2


@pytest.mark.parametrize("quant,kv,alternative,arch", [
    ("fp8", "auto", None, "llama"), ("int8_sq", "auto", None, "llama"),
    ("int8_wo", "auto", None, "llama"), ("int4_awq", "auto", None, "llama"),
    ("int4_gptq", "auto", None, "llama"), ("none", "int8", None, "llama"),
    ("none", "fp8", None, "llama"), ("fp8", "fp8", None, "llama"), ("fp8", "fp8", 4, "llama"),
    ("fp8", "auto", 8, "llama"),
    # GELU-tanh's output quantized by its own kernel (smoothed for int8_sq) before down
    ("fp8", "auto", None, "gemma3"), ("int8_sq", "auto", None, "gemma3"),
    # a mixture of experts' FP8 KV cache (its GEMMs stay unquantized)
    ("none", "fp8", None, "qwen3_moe")])
def test_quantized_program_matches_reference_backend(tmp_path, quant, kv, alternative, arch):
    """The quantized kernels and their lowering, whole: the program of a calibrated engine
    against the quantized ops' torch references. With an `alternative`, one sequence's decode
    steps through FP8's one-row GEMMs: 4, the first configuration with the norm, SiLU-mul or
    quantization before it folded in (x quantized in the kernel); 8, the second configuration
    after that kernel's own launch."""
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    import torch

    from kiln.builder.build import build_engine
    from kiln.builder.models import BuildConfig
    from kiln.quantize.calibrate import ModeloptCalibrator
    from kiln_testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(arch, tmp_path / "hf")
    calibrator = ModeloptCalibrator(
        torch.randint(3, 320, (6, 32), generator=torch.Generator().manual_seed(0)), device="cpu")
    build = BuildConfig(dtype="float32", max_batch_size=8, max_seq_len=128, max_num_tokens=64,
                        tokens_per_block=4, targets=[90], quant=quant, kv_cache_dtype=kv,
                        calibrator=calibrator)
    build_engine(ckpt, tmp_path / "e", build, progress=False)
    results = run(tmp_path / "e", QUANT_MIXED if alternative is None else SINGLE, alternative)
    for i, (err, same_argmax, picks_argmax, logprob_err) in enumerate(results):
        assert err < TIE_BOUND, f"step {i}: error {err:.2e}"
        assert picks_argmax and logprob_err < 1e-5, f"step {i}: pick error {logprob_err:.2e}"
    ties = sum(err >= 1e-4 for err, *_ in results)
    assert ties <= (TIE_STEPS if "fp8" in (quant, kv) else 0), [f"{e[0]:.1e}" for e in results]


class KVScales:
    """Calibration of the KV cache's scales only: 0.05 for every layer's K and V."""

    def calibrate(self, graph, build):
        import torch

        from kiln.quantize.calibration import Calibration

        layers = {n.attrs["layer"] for n in graph.nodes if n.op == "attention"}
        return Calibration(kv_scales={i: (torch.tensor([0.05]), torch.tensor([0.05]))
                                      for i in layers})


def int8_cache_engine(tmp_path, monkeypatch, long_split_tokens: int) -> dict:
    """A tiny float16 Llama over an int8 cache (KVScales) built into tmp_path / "e" with
    attention.LONG_SPLIT_TOKENS at `long_split_tokens`; its kernels header."""
    from kiln.builder.build import build_engine
    from kiln.builder.engine.loader import load_engine
    from kiln.builder.kernels import attention
    from kiln.builder.models import BuildConfig
    from kiln_testing import make_tiny_checkpoint

    monkeypatch.setattr(attention, "LONG_SPLIT_TOKENS", long_split_tokens)
    ckpt = make_tiny_checkpoint("llama", tmp_path / "hf")
    build = BuildConfig(dtype="float16", max_batch_size=8, max_seq_len=128, max_num_tokens=64,
                        tokens_per_block=4, targets=[90], kv_cache_dtype="int8",
                        calibrator=KVScales())
    build_engine(ckpt, tmp_path / "e", build, progress=False)
    return load_engine(tmp_path / "e").kernels


def check_within_ties(results) -> None:
    """Every step within TIE_BOUND with the reference's argmax and its own greedy pick, and all
    but TIE_STEPS within float16's bound."""
    for i, (err, same_argmax, picks_argmax, logprob_err) in enumerate(results):
        assert err < TIE_BOUND and same_argmax, f"step {i}: error {err:.2e}"
        assert picks_argmax and logprob_err < 1e-3, f"step {i}: pick error {logprob_err:.2e}"
    ties = sum(err >= BOUND["float16"] for err, *_ in results)
    assert ties <= TIE_STEPS, [f"{e[0]:.1e}" for e in results]


# A sequence of 124 tokens in chunks beside a short one's decodes. With splits of 61 tokens or
# more long (LONG_SPLIT_TOKENS), an 8-bit cache's decodes take each of their launches: unsplit
# (the second step: 9 tokens of context), a short split (the third: the step's longest context
# 90 tokens, S = 2, 45 a split) and long splits (the fourth on: 124 to 126, 62 or 63 a split).
SPLIT_LAUNCHES = [[124, 7], [[1, 7], [0, 57]], [[1, 1]], [[1, 1], [0, 33]], [[1, 1], [0, 34]],
                  [[0, 1], [1, 1]], [[0, 1], [1, 1]]]


def test_program_8bit_cache_decode_launch_per_split_length(tmp_path, monkeypatch):
    """A 16-bit build's decode kernel over an 8-bit cache has a launch for unsplit steps, one
    for splits shorter than attention.LONG_SPLIT_TOKENS and one for longer ones; each runs in
    SPLIT_LAUNCHES, and every step equals the reference backend: within float16's bound, but
    for up to TIE_STEPS steps within TIE_BOUND where a K or V value sits at an int8 rounding
    boundary (the fifth step here, 1.47e-2, whichever of the launches runs it)."""
    header = int8_cache_engine(tmp_path, monkeypatch, long_split_tokens=61)
    assert sum(f.endswith(">= 61") for _, f in header["derived"]) == 1
    decodes = {s["kernel"] for s in header["program"] if s["kind"] == "kernel"
               and header["kernels"][s["kernel"]]["fn"].endswith(".paged_decode_kernel")}
    launched = {}
    check_within_ties(run(tmp_path / "e", SPLIT_LAUNCHES, launched=launched))
    configs = {(header["kernels"][k]["num_warps"], header["kernels"][k]["num_stages"])
               for k in decodes if launched.get(k)}
    assert configs == {(1, 2), (4, 2), (2, 3)}, configs


# Three sequences, one GPU multiprocessor (NSM 1: every step unsplit) that holds 3 one-warp
# decode programs or 2 two-warp ones: the long steps (a context of 12 tokens or more, with
# LONG_SPLIT_TOKENS at 12) of 1 or 2 decodes (2 or 4 programs: 3 or 6 slots for the narrow
# launch, 2 or 4 for the wide) take the wide launch, the long step of 3 (6 programs: 6 slots
# either way) and the short step (8 tokens) the narrow one.
WAVE_LAUNCHES = [[6, 19, 29], [[0, 6], [1, 19], [2, 29]], [[0, 1], [1, 1], [2, 1]],
                 [[1, 1], [2, 1]], [[0, 1]], [[0, 1], [1, 1]], [[2, 1]]]


def test_program_8bit_cache_long_unsplit_decodes_take_the_launch_whose_waves_pad_fewer(
        tmp_path, monkeypatch):
    """An 8-bit cache's unsplit decodes of long contexts run on one warp a program or on two,
    whichever pads the step's programs (BD x NKV) to fewer whole waves of what the GPU holds at
    once (the plan's resident symbols, which the emulator takes as num_sms x programs_per_sm);
    both equal the reference backend."""
    header = int8_cache_engine(tmp_path, monkeypatch, long_split_tokens=12)
    assert header["kv_cache"]["num_kv_heads"] == 2
    narrow, wide = (key for _, key in header["resident"])
    assert [header["kernels"][k]["num_warps"] for k in (narrow, wide)] == [1, 2]
    layers = header["kv_cache"]["num_layers"]
    launched = {}
    check_within_ties(run(tmp_path / "e", WAVE_LAUNCHES, launched=launched, num_sms=1,
                          programs_per_sm={1: 3, 2: 2}))
    # Decode steps: 3 long (narrow), 2 long (wide), 1 short (narrow), 2 long (wide), 1 long
    # (wide); the prompt step runs no decode launch.
    assert (launched.get(narrow, 0), launched.get(wide, 0)) == (2 * layers, 3 * layers)
