"""Quantized engines on the GPU plan executor against the CPU reference backend running the same
engine (the quantized ops' torch references): prefill, chunked prefill mixed with decodes, and
decodes as CUDA graphs: the quantized kernels, their lowering and the FP8 cuBLASLt GEMM whole,
as engine-build puts them in the engine."""
import numpy as np
import pytest
import torch

from kiln.builder.engine import load_engine
from kiln.runtime.reference import ReferenceBackend
from test_engines import NUM_BLOCKS, rel, run_schedule

pytestmark = pytest.mark.gpu

MODES = [("fp8", "auto"), ("int8_sq", "auto"), ("int8_wo", "auto"), ("int4_awq", "auto"),
         ("int4_gptq", "auto"), ("none", "fp8"), ("none", "int8"), ("fp8", "fp8")]
# Per step, with rel(a, b) = ||a - b|| / ||b||:
#  - every mode: the GPU's logits are no farther from the unquantized float32 model than twice
#    the reference's own distance (+0.01), as the bfloat16 engines in test_engines.py. A wrong
#    scale, packing or operand lands many times farther.
#  - modes without FP8 GEMMs: rel(gpu, reference) < BOUND, test_engines.py's bfloat16 sanity
#    bound: the same quantized math in bfloat16, summed in another order (measured up to 4e-2:
#    an activation one rounding step apart lands on the neighbouring code). cuBLASLt's FP8
#    GEMMs accumulate as the FP8 tensor cores do (about 1e-4 relative where float32 gives 1e-7)
#    and the e4m3 quantizations after them turn that into several percent by the logits, so
#    for FP8 only the first bound applies (the exact FP8 program is checked on the CPU in
#    tests/builder/test_kernels_program.py).
BOUND = 8e-2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    from kiln_testing import make_tiny_checkpoint
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("qengines") / "hf")


@pytest.fixture(scope="module")
def unquantized(ckpt, tmp_path_factory):
    """The reference backend's engine of the checkpoint in float32, unquantized."""
    from kiln.builder.build import build_engine
    from kiln.builder.models import BuildConfig

    out = tmp_path_factory.mktemp("qengines") / "exact"
    build_engine(ckpt, out, BuildConfig(dtype="float32", max_batch_size=8, max_seq_len=128,
                                        max_num_tokens=64, tokens_per_block=4), progress=False)
    return load_engine(out)


def build_quantized(ckpt, path, sm, quant, kv):
    from kiln.builder.build import build_engine
    from kiln.builder.models import BuildConfig
    from kiln.quantize.calibrate import ModeloptCalibrator

    # Calibrated on the CPU (GPU calibration is tests/quantize/test_gpu.py's), but for GPTQ:
    # modelopt's GPTQ asks CUDA for the free memory of the model's device whenever CUDA exists.
    calibrator = ModeloptCalibrator(
        torch.randint(3, 320, (6, 32), generator=torch.Generator().manual_seed(0)),
        device="cuda" if quant == "int4_gptq" else "cpu")
    build = BuildConfig(dtype="bfloat16", max_batch_size=8, max_seq_len=128, max_num_tokens=64,
                        tokens_per_block=4, targets=[sm], quant=quant, kv_cache_dtype=kv,
                        calibrator=calibrator)
    build_engine(ckpt, path, build, progress=False)
    return load_engine(path)


def check_against_reference(engine, unquantized, gpu, quant):
    steps, _ = run_schedule([ReferenceBackend(engine, NUM_BLOCKS), gpu,
                             ReferenceBackend(unquantized, NUM_BLOCKS)], engine)
    for i, (ref, out, exact) in enumerate(zip(*steps)):
        assert np.isfinite(out).all(), f"step {i}: non-finite logits"
        own, ours = rel(ref, exact), rel(out, exact)
        assert ours < 2 * own + 0.01, f"step {i}: {ours:.3f} from float32, reference {own:.3f}"
        if quant != "fp8":
            assert rel(out, ref) < BOUND, f"step {i}: error {rel(out, ref):.2e}"
    assert gpu.graph_stats()["replays"] > 0


@pytest.mark.parametrize("quant, kv", MODES)
def test_quantized_engine_matches_reference(core, sm, ckpt, unquantized, tmp_path, quant, kv):
    if "fp8" in (quant, kv) and sm < 89:
        pytest.skip("FP8 needs SM 89 or newer")
    engine = build_quantized(ckpt, tmp_path / "e", sm, quant, kv)
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    assert not gpu.fp8_fast_accumulation
    check_against_reference(engine, unquantized, gpu, quant)


@pytest.mark.parametrize("kv", ["auto", "fp8"])
def test_fp8_fast_accumulation_matches_reference(core, sm, ckpt, unquantized, tmp_path, kv):
    """FP8 GEMMs accumulating without promotion to float32 stay within the FP8 bound; turning
    it on and off drops the captured graphs, and the GEMM choices are made again."""
    if sm < 89:
        pytest.skip("FP8 needs SM 89 or newer")
    engine = build_quantized(ckpt, tmp_path / "e", sm, "fp8", kv)
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    gpu.fp8_fast_accumulation = True
    check_against_reference(engine, unquantized, gpu, "fp8")
    assert gpu.graph_stats()["captured"] > 0 and gpu.gemm_choices()
    gpu.fp8_fast_accumulation = False
    assert gpu.graph_stats()["captured"] == 0 and not gpu.fp8_fast_accumulation
    check_against_reference(engine, unquantized, gpu, "fp8")
    # The runner's default on the GPU is fast accumulation; False promotes.
    from kiln.runtime import ModelRunner
    for asked, expected in ((None, True), (False, False), (True, True)):
        with ModelRunner.from_dir(tmp_path / "e", device="cuda",
                                  fp8_fast_accumulation=asked) as runner:
            assert runner.fp8_fast_accumulation is expected
            assert runner.backend.fp8_fast_accumulation is expected


def test_8bit_cache_long_unsplit_decodes_take_either_launch(core, sm, tmp_path, monkeypatch):
    """An 8-bit cache's unsplit decode steps of long contexts run on one warp a program or on
    two, whichever pads the step's BD x NKV programs to fewer whole waves of what this GPU
    holds at once (the plan's resident symbols, which the executor counts at load); a step
    taking either equals the reference backend. Llama-3.1-8B's attention heads (32 x 128, 8
    KV heads: its decode launches) on one layer; LONG_SPLIT_TOKENS at 8 makes ~10-token
    contexts long, and 33 or more sequences (264 programs, 2 x 132 SMs) keep a step unsplit."""
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    from kiln.builder.build import build_engine
    from kiln.builder.kernels import attention
    from kiln.builder.kernels.symbols import evaluate
    from kiln.builder.models import BuildConfig
    from kiln.quantize.calibrate import ModeloptCalibrator
    from kiln_testing import PagedSequences, make_tiny_checkpoint

    monkeypatch.setattr(attention, "LONG_SPLIT_TOKENS", 8)
    ckpt = make_tiny_checkpoint("llama", tmp_path / "hf", hidden_size=256, intermediate_size=512,
                                num_hidden_layers=1, num_attention_heads=32,
                                num_key_value_heads=8, head_dim=128)
    calibrator = ModeloptCalibrator(
        torch.randint(3, 320, (6, 32), generator=torch.Generator().manual_seed(0)), device="cpu")
    max_batch, blocks = 320, 320 * 5
    build_engine(ckpt, tmp_path / "e", BuildConfig(
        dtype="bfloat16", max_batch_size=max_batch, max_seq_len=64, max_num_tokens=4096,
        tokens_per_block=4, targets=[sm], kv_cache_dtype="int8", calibrator=calibrator),
        progress=False)
    engine = load_engine(tmp_path / "e")
    h = engine.kernels
    gpu = core.PlanExecutor(engine, num_blocks=blocks)
    resident = gpu.resident_programs()
    (rn, narrow), (rw, wide) = h["resident"]
    assert [h["kernels"][k]["num_warps"] for k in (narrow, wide)] == [1, 2]
    nsm = torch.cuda.get_device_properties(0).multi_processor_count
    assert set(resident) == {rn, rw} and all(v > 0 and v % nsm == 0 for v in resident.values())

    def padded(programs, r):
        return -(-programs // r) * r

    # The first batch from 33 sequences up whose waves pad fewer on the wide launch, and the
    # first after it that does not.
    takes_wide = [bd for bd in range(33, max_batch + 1)
                  if padded(8 * bd, resident[rw]) < padded(8 * bd, resident[rn])]
    if not takes_wide:
        pytest.skip(f"on this GPU the wide launch never pads fewer ({resident})")
    wide_bd = takes_wide[0]
    narrow_bd = next(bd for bd in range(wide_bd, max_batch + 1) if bd not in takes_wide)
    whens = [(s["kernel"], s["when"]) for s in h["program"] if s["kind"] == "kernel"
             and h["kernels"][s["kernel"]]["fn"].endswith(".paged_decode_kernel")]
    count = max(wide_bd, narrow_bd)
    seqs = PagedSequences(4, engine.config.build.max_blocks_per_seq, blocks, seed=5)
    gen = torch.Generator().manual_seed(7)
    for _ in range(count):
        seqs.add(torch.randint(0, engine.config.model.vocab_size, (9,), generator=gen).tolist())
    ref = ReferenceBackend(engine, blocks)
    taken = set()
    for plan in ([(i, 9) for i in range(count)], [(i, 1) for i in range(wide_bd)],
                 [(i, 1) for i in range(narrow_bd)]):
        step = seqs.step(plan)
        a, b = np.asarray(ref.forward(step)), np.asarray(gpu.forward(step))
        assert np.isfinite(b).all() and rel(b, a) < BOUND, f"{len(plan)} rows: {rel(b, a):.2e}"
        for row, (sid, _) in enumerate(plan):
            if seqs.computed[sid] == len(seqs.tokens[sid]):
                seqs.tokens[sid].append(int(a[row].argmax()))
        if plan[0][1] == 1:  # a decode step: the launch its symbols take
            symbols = dict(resident, T=len(plan), B=len(plan), BD=len(plan), MAXQ=1, NSM=nsm,
                           MAXCTX=int(step["context_lens"].max()), LOGITS=1,
                           MAXBLK=step["block_tables"].shape[1])
            for name, formula in h["derived"]:
                symbols[name] = evaluate(formula, symbols)
            taken |= {(len(plan), k) for k, when in whens if when and evaluate(when, symbols)}
    assert taken == {(wide_bd, wide), (narrow_bd, narrow)}, (taken, resident)
