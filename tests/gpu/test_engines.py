"""Whole engines on the GPU plan executor against the CPU reference backend and HuggingFace:
prefill, chunked prefill mixed with decodes, and decodes, teacher-forced so every step compares
the same inputs."""
import numpy as np
import pytest
import torch
import transformers

from kiln.builder.engine import load_engine
from kiln.builder.errors import KilnError
from kiln.runtime.reference import ReferenceBackend
from kiln_testing import TINY_ARCHS, PagedSequences, hf_greedy

pytestmark = pytest.mark.gpu

ARCHS = TINY_ARCHS
# ||gpu - reference|| / ||reference|| per step's logits. The 16-bit bounds are sanity bounds
# (bfloat16 measured up to 4.1e-2 on the H100, Qwen2 with its random q/k biases); the real 16-bit
# check is against the same model in float32, below.
BOUND = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 8e-2}
# Routed (MoE) families in bfloat16: their router's logits are bfloat16 too (OLMoE, GraniteMoE),
# and where two experts' logits tie within an ulp, the GPU's GEMM and the reference's pick
# different experts for a token; measured up to 1.14e-1 on the H200 (OLMoE). Such a flip moves
# one step's logits far from the float32 model's, on the GPU in some steps and on the CPU
# reference in others (OLMoE on an H100, 2026-12-06: the reference 1.36e-1 and 1.05e-1 from
# float32 in two steps where the GPU was 3.6e-2 and 2.8e-2, the GPU 7.8e-2 in a third where the
# reference was 2.1e-2): the float32 check then holds over the schedule, and in every step but
# ROUTED_FLIPS of them.
ROUTED_BOUND = dict(BOUND, bfloat16=1.6e-1)
ROUTED_FLIPS = 2
NUM_BLOCKS = 40
SCHEDULE = ([[(0, 7), (1, 6), (2, 10)], [(1, 7), (2, 10), (0, 1)]]
            + [[(0, 1), (1, 1), (2, 1)]] * 10)


def run_schedule(backends, engine, seed=3):
    """Runs SCHEDULE on every backend with identical steps; tokens follow the first backend's
    argmax. Returns per-step logits of each backend and the sequences."""
    build = engine.config.build
    seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, NUM_BLOCKS, seed=seed)
    gen = torch.Generator().manual_seed(11)
    for n in (7, 13, 20):
        seqs.add(torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist())
    outputs = [[] for _ in backends]
    for plan in SCHEDULE:
        step = seqs.step(plan)
        logits = [np.asarray(b.forward(step)) for b in backends]
        for store, value in zip(outputs, logits):
            store.append(value)
        for row, (sid, _) in enumerate(plan):
            if seqs.computed[sid] == len(seqs.tokens[sid]):
                seqs.tokens[sid].append(int(logits[0][row].argmax()))
    return outputs, seqs


def rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_matches_reference_backend(core, sm, tiny_engine, arch, dtype):
    """float32: the GPU equals the reference to 1e-4. 16-bit: the GPU's distance from the
    same model in float32 is at most twice the CPU reference's own 16-bit distance (+1e-3), in
    every step and summed over the schedule (routed families in bfloat16: in every step but
    ROUTED_FLIPS)."""
    engine = load_engine(tiny_engine(arch, dtype, targets=(sm,))[1])
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    assert gpu.num_blocks == NUM_BLOCKS
    backends = [ReferenceBackend(engine, NUM_BLOCKS), gpu]
    if dtype != "float32":
        exact = load_engine(tiny_engine(arch, "float32", targets=(sm,))[1])
        backends.append(ReferenceBackend(exact, NUM_BLOCKS))
    steps, _ = run_schedule(backends, engine)
    routed = bool(engine.config.model.num_experts)
    owns, ourses = [], []
    for i in range(len(SCHEDULE)):
        ref, out = steps[0][i], steps[1][i]
        assert out.shape == ref.shape and out.dtype == np.float32
        if dtype == "float32":
            assert rel(out, ref) < BOUND[dtype], f"step {i}: error {rel(out, ref):.2e}"
            assert (out.argmax(-1) == ref.argmax(-1)).all()
        else:
            owns.append(rel(ref, steps[2][i]))
            ourses.append(rel(out, steps[2][i]))
            bound = (ROUTED_BOUND if routed else BOUND)[dtype]
            assert rel(out, ref) < bound, f"step {i}: error {rel(out, ref):.2e}"
    farther = [f"step {i}: {ours:.2e} from float32, reference {own:.2e}"
               for i, (own, ours) in enumerate(zip(owns, ourses)) if ours >= 2 * own + 1e-3]
    assert len(farther) <= (ROUTED_FLIPS if routed and dtype == "bfloat16" else 0), farther
    assert sum(ourses) <= 2 * sum(owns) + 1e-3 * len(owns), (ourses, owns)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_float32_engine_matches_huggingface(core, sm, tiny_engine, arch):
    ckpt, path = tiny_engine(arch, "float32", targets=(sm,))
    engine = load_engine(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    (steps,), seqs = run_schedule([core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)], engine)
    seen = {0: 0, 1: 0, 2: 0}
    with torch.no_grad():
        hf = {sid: model(torch.tensor([seqs.tokens[sid]])).logits[0] for sid in seen}
    for plan, logits in zip(SCHEDULE, steps):
        for row, (sid, n) in enumerate(plan):
            seen[sid] += n
            torch.testing.assert_close(torch.from_numpy(logits[row]), hf[sid][seen[sid] - 1],
                                       atol=2e-4, rtol=0)


def test_engine_eval_on_gpu_equals_the_reference_backend(core, sm, tiny_engine):
    """engine-eval's GPU path (the windows side by side, a token each a step) scores what the
    reference backend's chunked prefill scores: float32, so to 1e-4."""
    from kiln.runtime.eval import perplexity

    _, path = tiny_engine("llama", "float32", targets=(sm,))
    engine = load_engine(path)
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(3, 320, (150,), generator=g).tolist()
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    ours = perplexity(engine, ids, window=40, backend=gpu)
    ref = perplexity(engine, ids, window=40)
    assert (ours.tokens, ours.windows) == (ref.tokens, ref.windows) == (146, 4)
    assert ours.value == pytest.approx(ref.value, rel=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_model_runner_on_gpu_is_greedy_huggingface(core, sm, tiny_engine, arch):
    from kiln.runtime import ModelRunner

    ckpt, path = tiny_engine(arch, "float32", targets=(sm,))
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(5)
    batch = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (5, 17, 9, 30)]
    expected = [p + hf_greedy(model, p, 12) for p in batch]
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=4096) as runner:
        assert runner.device == "cuda"
        out = runner.generate(batch, max_new_tokens=12, end_id=-1, return_dict=True)
    for i, ids in enumerate(expected):
        assert out["output_ids"][i, 0, : len(ids)].tolist() == ids


def test_prompt_log_probs_on_gpu_equal_huggingface(core, sm, tiny_engine):
    """Prompt log-probabilities through the GPU plan (a token a step, the logits of rows that
    pick no token read back): HF's log-softmax of the float32 model's logits, to 1e-4."""
    from kiln.runtime import ModelRunner

    ckpt, path = tiny_engine("llama", "float32", targets=(sm,))
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(6)
    batch = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (13, 7)]
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=4096) as runner:
        out = runner.generate(batch, max_new_tokens=3, end_id=-1, prompt_log_probs=2,
                              return_dict=True)
    for p, lps, tops in zip(batch, out["prompt_log_probs"], out["prompt_top_log_probs"]):
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([p])).logits[0, :-1].double(), -1)
        assert lps == pytest.approx(want.gather(1, torch.tensor(p[1:])[:, None])[:, 0].tolist(),
                                    abs=1e-4)
        assert [[t for t, _ in top] for top in tops] == want.topk(2).indices.tolist()


def test_beam_search_on_gpu_equals_huggingface(core, sm, tiny_engine):
    """Beam search through the GPU plan (each beam's continuation a sequence of its own, its
    shared blocks from the prefix cache): HF's beams of the float32 model."""
    from kiln.runtime import ModelRunner

    ckpt, path = tiny_engine("llama", "float32", targets=(sm,))
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(8)
    batch = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (9, 14)]
    with ModelRunner.from_dir(path, device="cuda", max_tokens_in_paged_kv_cache=4096) as runner:
        out = runner.generate(batch, max_new_tokens=6, end_id=-1, num_beams=3, return_dict=True)
    for i, p in enumerate(batch):
        with torch.no_grad():
            hf = model.generate(torch.tensor([p]), max_new_tokens=6, num_beams=3,
                                num_return_sequences=3, do_sample=False, pad_token_id=0,
                                eos_token_id=None)
        assert torch.equal(out["output_ids"][i, :, : hf.shape[1]].long(), hf)


def test_smollm2_gguf_bfloat16_matches_huggingface(core, sm, tmp_path):
    """The bundled real model (SmolLM2-135M-Instruct, GGUF) as a bfloat16 engine: the logits of
    a real prompt's last token against HuggingFace's bfloat16 on the same GPU."""
    from kiln.builder.build import build_engine
    from kiln.builder.checkpoint import find_bundled_gguf
    from kiln.builder.models import BuildConfig

    try:
        gguf = find_bundled_gguf()
    except KilnError as e:
        pytest.skip(str(e))
    build_engine(gguf, tmp_path / "engine", BuildConfig(
        dtype="bfloat16", max_batch_size=4, max_seq_len=256, max_num_tokens=128,
        tokens_per_block=16, targets=(sm,)), progress=False)
    engine = load_engine(tmp_path / "engine")
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16).cuda().eval()
    ids = tok("The capital of France is Paris. The capital of Italy is")["input_ids"]
    seqs = PagedSequences(16, engine.config.build.max_blocks_per_seq, 64, seed=1)
    seqs.add(ids)
    gpu = core.PlanExecutor(engine, num_blocks=64)
    out = gpu.forward(seqs.step([(0, len(ids))]))[0]
    with torch.no_grad():
        ref = model(torch.tensor([ids]).cuda()).logits[0, -1].float().cpu().numpy()
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 3e-2, f"error {err:.2e}"
    assert out.argmax() == ref.argmax()


def test_engine_without_this_sm_is_refused(core, sm, tiny_engine):
    other = 80 if sm != 80 else 90
    _, path = tiny_engine("llama", "bfloat16", targets=(other,))
    with pytest.raises(KilnError, match=rf"engine has kernels for sm_{other} only; this GPU is "
                                        rf"sm_{sm}: rebuild with --target-sm {sm}"):
        core.PlanExecutor(load_engine(path), num_blocks=8)


def test_kv_cache_sized_from_free_memory_and_refused_when_too_small(core, sm, tiny_engine):
    _, path = tiny_engine("llama", "bfloat16", targets=(sm,))
    engine = load_engine(path)
    gpu = core.PlanExecutor(engine, 0.01)
    m, b = engine.config.model, engine.config.build
    block = m.num_layers * 2 * m.num_kv_heads * b.tokens_per_block * m.head_dim * 2
    # The fraction is of the memory free once the weights and activations are placed, as the
    # executor read it: other processes on the GPU (gpu_check's other shards) change what a
    # reading taken here would say.
    mem = gpu.memory()
    assert 0 < mem["free_before_kv_cache"] <= mem["total"] == torch.cuda.mem_get_info()[1]
    assert gpu.num_blocks == int(0.01 * mem["free_before_kv_cache"]) // block > 0
    assert mem["kv_cache"] == gpu.num_blocks * block and mem["weights"] > 0
    del gpu
    with pytest.raises(KilnError, match="the KV cache does not fit"):
        core.PlanExecutor(engine, 1e-12)


def test_bad_steps_are_refused(core, sm, tiny_engine):
    _, path = tiny_engine("llama", "float32", targets=(sm,))
    engine = load_engine(path)
    gpu = core.PlanExecutor(engine, num_blocks=8)
    seqs = PagedSequences(4, engine.config.build.max_blocks_per_seq, 8, seed=0)
    seqs.add([1, 2, 3])
    step = seqs.step([(0, 3)])
    bad = dict(step, input_ids=np.array([1, 2, 10**6], np.int32))
    with pytest.raises(KilnError, match="outside the vocabulary"):
        gpu.forward(bad)
    bad = dict(step, slot_mapping=np.array([0, 1, 10**6], np.int64))
    with pytest.raises(KilnError, match="beyond the cache"):
        gpu.forward(bad)
    assert gpu.forward(step).shape == (1, engine.config.model.vocab_size)
