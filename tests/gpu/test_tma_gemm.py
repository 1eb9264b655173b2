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


def _engine(tmp_path, sm, **limits):
    """A tiny Llama engine whose gate/up GEMM fits the TMA kernel's tiles (N 1,024, K 256)."""
    from kiln.builder.build import build_engine
    from kiln.builder.engine import load_engine
    from kiln.builder.models import BuildConfig
    from kiln_testing import make_tiny_checkpoint
    ckpt = make_tiny_checkpoint("llama", tmp_path / "hf", hidden_size=256, intermediate_size=512,
                                num_attention_heads=4, num_key_value_heads=2)
    build_engine(ckpt, tmp_path / "engine", BuildConfig(dtype="bfloat16", targets=[sm], **limits),
                 progress=False)
    return load_engine(tmp_path / "engine")


def _steps(engine, gpu, prompts, num_blocks):
    """The logits of a prompt step of `prompts` (lengths) and of the decode step after it."""
    from kiln_testing import PagedSequences
    build = engine.config.build
    seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, num_blocks, seed=3)
    gen = torch.Generator().manual_seed(3)
    for n in prompts:
        seqs.add(torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist())
    out = []
    for plan in ([(i, n) for i, n in enumerate(prompts)], [(i, 1) for i in range(len(prompts))]):
        full = gpu.run_step(seqs.step(plan), list(range(len(prompts))))
        out.append(torch.from_numpy(full["logits"]))
        for row, (sid, _) in enumerate(plan):
            seqs.tokens[sid].append(int(full["tokens"][row]))
    return out


def _glu_choices(gpu, m):
    return [c["algorithm"] for c in gpu.gemm_choices()
            if c["dtype"] == "choice" and (c["m"], c["n"], c["k"]) == (m, 1024, 256)]


def _close(want, got):
    for a, b in zip(want, got):
        err = (b - a).abs().max().item() / a.abs().max().item()
        assert err < 2e-2, f"relative error {err:.2e}"


def test_kernels_from_rows_runs_the_glu_kernel(core, sm, tmp_path):
    """PlanExecutor.kernels_from_rows: from that many rows the gate/up GEMM runs the GLU kernel
    (an alternative that takes those rows) rather than cuBLASLt and silu_mul, untimed against
    them, and the steps' logits are the timed choices' within bfloat16's rounding; 0 again drops
    those choices. An engine whose steps take fewer rows than the GLU is preferred from leaves
    every choice to the timing by default (None)."""
    from kiln.builder.errors import KilnError
    engine = _engine(tmp_path, sm, max_batch_size=8, max_seq_len=128, max_num_tokens=64,
                     tokens_per_block=4)
    default, timed, preferred = (core.PlanExecutor(engine, num_blocks=64) for _ in range(3))
    timed.kernels_from_rows = 0
    preferred.kernels_from_rows = 17
    assert (default.kernels_from_rows, timed.kernels_from_rows, preferred.kernels_from_rows) \
        == (None, 0, 17)
    want = _steps(engine, timed, (23, 37), 64)
    _close(want, _steps(engine, preferred, (23, 37), 64))
    _close(want, _steps(engine, default, (23, 37), 64))
    (choice,) = _glu_choices(preferred, 60)
    assert "kiln #" in choice and "preferred from 17 rows, untimed" in choice, choice
    assert all("preferred" not in c for c in _glu_choices(timed, 60) + _glu_choices(default, 60))
    preferred.kernels_from_rows = 0
    assert _glu_choices(preferred, 60) == []
    with pytest.raises(KilnError, match="kernels_from_rows must be None"):
        preferred.kernels_from_rows = -1


def test_engine_prefers_the_glu_kernel_from_its_rows(core, sm, tmp_path):
    """From tma_gemm.PREFERRED_FROM_M rows the engine marks the gate/up GEMM's GLU kernel
    preferred: by default a step of that many rows runs it untimed against cuBLASLt and
    silu_mul, within bfloat16's rounding of the timed choices (kernels_from_rows 0), and a
    decode step of fewer rows is timed as before."""
    from kiln.builder.kernels import tma_gemm
    rows = tma_gemm.PREFERRED_FROM_M
    engine = _engine(tmp_path, sm, max_batch_size=32, max_seq_len=160, max_num_tokens=rows,
                     tokens_per_block=16)
    prompts = (rows // 32,) * 32
    default, timed = (core.PlanExecutor(engine, num_blocks=512) for _ in range(2))
    timed.kernels_from_rows = 0
    _close(_steps(engine, timed, prompts, 512), _steps(engine, default, prompts, 512))
    (choice,) = _glu_choices(default, rows)
    assert "kiln #" in choice and "preferred by the engine, untimed" in choice, choice
    assert all("preferred" not in c for c in _glu_choices(timed, rows) + _glu_choices(default, 32))
