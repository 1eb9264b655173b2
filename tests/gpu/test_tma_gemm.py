"""The persistent TMA GEMM for many rows (kiln.builder.kernels.tma_gemm): the plain product
against torch's in float32, and with GLU against the plain product then silu_mul_kernel over the
gate/up rows in pairs, bit for bit."""
import pytest
import torch

from kiln.builder.kernels.elementwise import silu_mul
from kiln.builder.kernels.tma_gemm import linear_tma

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def hopper(sm):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("TMA and wgmma need sm_90 or newer")
    torch.manual_seed(0)


def paired(w):
    i = w.shape[0] // 2
    return torch.stack((w[:i], w[i:]), 1).reshape(w.shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(17, 512, 256), (300, 3072, 576), (1000, 6144, 4096),
                                   (3008, 4096, 14336 // 4)])
def test_tma_gemm_equals_torch(dtype, m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = (torch.randn(n, k, device="cuda") * k ** -0.5).to(dtype)
    want = (x.float() @ w.float().T)
    got = linear_tma(x, w).float()
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err < 1e-2, f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,i,k", [(17, 256, 256), (300, 1536, 576), (3008, 14336 // 4, 4096)])
def test_tma_gemm_glu_equals_plain_then_silu_mul(dtype, m, i, k):
    """GLU's tiles are the plain kernel's (128 x 256 products in the same order), so its output
    is the plain product through silu_mul_kernel over the pairs, bit for bit."""
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = paired((torch.randn(2 * i, k, device="cuda") * k ** -0.5).to(dtype))
    want = silu_mul(linear_tma(x, w), pairs=True)
    got = linear_tma(x, w, glu=True)
    assert torch.equal(got, want), f"{(got.float() - want.float()).abs().max().item():.3g} apart"


def test_kernels_from_rows_runs_the_glu_kernel(core, sm, tmp_path):
    """PlanExecutor.kernels_from_rows: from that many rows the gate/up GEMM runs the GLU kernel
    (an alternative that takes those rows) rather than cuBLASLt and silu_mul, untimed against
    them, and the steps' logits are the timed choices' within bfloat16's rounding; 0 again drops
    those choices."""
    from kiln.builder.build import build_engine
    from kiln.builder.engine import load_engine
    from kiln.builder.errors import KilnError
    from kiln.builder.models import BuildConfig
    from kiln_testing import PagedSequences, make_tiny_checkpoint
    ckpt = make_tiny_checkpoint("llama", tmp_path / "hf", hidden_size=256, intermediate_size=512,
                                num_attention_heads=4, num_key_value_heads=2)
    build_engine(ckpt, tmp_path / "engine", BuildConfig(
        dtype="bfloat16", max_batch_size=8, max_seq_len=128, max_num_tokens=64,
        tokens_per_block=4, targets=[sm]), progress=False)
    engine = load_engine(tmp_path / "engine")
    timed, preferred = (core.PlanExecutor(engine, num_blocks=64) for _ in range(2))
    preferred.kernels_from_rows = 17
    assert (timed.kernels_from_rows, preferred.kernels_from_rows) == (0, 17)

    def steps(gpu):
        build = engine.config.build
        seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, 64, seed=3)
        gen = torch.Generator().manual_seed(3)
        for n in (23, 37):
            seqs.add(torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist())
        out = []
        for plan in ([(0, 23), (1, 37)], [(0, 1), (1, 1)]):
            full = gpu.run_step(seqs.step(plan), [0, 1])
            out.append(torch.from_numpy(full["logits"]))
            for row, (sid, _) in enumerate(plan):
                seqs.tokens[sid].append(int(full["tokens"][row]))
        return out

    def glu_choices(gpu):
        return [c["algorithm"] for c in gpu.gemm_choices()
                if c["dtype"] == "choice" and (c["m"], c["n"], c["k"]) == (60, 1024, 256)]

    for want, got in zip(steps(timed), steps(preferred)):
        err = (got - want).abs().max().item() / want.abs().max().item()
        assert err < 2e-2, f"relative error {err:.2e}"
    (choice,) = glu_choices(preferred)
    assert "kiln #" in choice and "preferred from 17 rows" in choice, choice
    assert all("preferred" not in c for c in glu_choices(timed))
    preferred.kernels_from_rows = 0
    assert glu_choices(preferred) == []
    with pytest.raises(KilnError, match="kernels_from_rows must be 0"):
        preferred.kernels_from_rows = -1
