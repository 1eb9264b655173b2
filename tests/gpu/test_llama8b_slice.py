"""A 2-layer slice of a Llama-3.1-8B-shaped model (real widths, vocabulary and llama3 RoPE;
random weights made on the GPU) as a bfloat16 engine, against HuggingFace on the same GPU."""
import numpy as np
import pytest
import torch

from kiln.builder.build import build_engine
from kiln.builder.engine import load_engine
from kiln.builder.models import BuildConfig
from kiln.builder.random_weights import RandomCheckpoint
from kiln.runtime.bench.baseline_hf import load_hf_model
from kiln_testing import PagedSequences

pytestmark = pytest.mark.gpu
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def slice_engine(sm, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama8b") / "engine"
    build_engine(RandomCheckpoint("llama-3.1-8b", seed=0, num_layers=2), out, BuildConfig(
        dtype="bfloat16", max_batch_size=4, max_seq_len=1024, max_num_tokens=512,
        tokens_per_block=32, targets=[sm]), progress=False)
    engine = load_engine(out)
    model, source = load_hf_model(engine, "cuda")
    assert source == "the engine's weights"
    return engine, model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids], device="cuda")).logits[0, -1].float().cpu().numpy()


def test_prefill_logits_match_huggingface(core, slice_engine):
    engine, model = slice_engine
    gen = torch.Generator().manual_seed(4)
    for n in (7, 300):
        ids = torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist()
        seqs = PagedSequences(32, engine.config.build.max_blocks_per_seq, 64, seed=2)
        seqs.add(ids)
        ours = core.PlanExecutor(engine, num_blocks=64).forward(seqs.step([(0, n)]))[0]
        ref = hf_logits(model, ids)
        err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert err < 2e-2, f"prompt of {n}: relative error {err:.2e}"


def test_greedy_32_tokens_equal_huggingface(core, slice_engine):
    """Greedy decoding, 32 tokens. Where the two pick different tokens, that must be a tie
    within bfloat16 rounding: HF's margin between its pick and ours is no larger than twice the
    largest difference between our logits and HF's at that step. After such a tie the
    sequences may go different ways, so the comparison ends there (and says so)."""
    engine, model = slice_engine
    gen = torch.Generator().manual_seed(8)
    ids = torch.randint(0, engine.config.model.vocab_size, (24,), generator=gen).tolist()
    gpu = core.PlanExecutor(engine, num_blocks=64)
    seqs = PagedSequences(32, engine.config.build.max_blocks_per_seq, 64, seed=5)
    seqs.add(ids)
    plan, matched = [(0, len(ids))], 0
    for _ in range(NEW_TOKENS):
        ours = gpu.forward(seqs.step(plan))[0]
        ref = hf_logits(model, seqs.tokens[0])
        mine, theirs = int(ours.argmax()), int(ref.argmax())
        if mine != theirs:
            margin = float(ref[theirs] - ref[mine])
            noise = float(np.abs(ours - ref).max())
            assert margin <= 2 * noise, (f"token {matched}: ours {mine}, HF {theirs}, HF margin "
                                         f"{margin:.3f} > 2 x logit difference {noise:.3f}")
            print(f"tie within bf16 rounding after {matched} equal tokens; comparison ends")
            break
        matched += 1
        seqs.tokens[0].append(mine)
        plan = [(0, 1)]
