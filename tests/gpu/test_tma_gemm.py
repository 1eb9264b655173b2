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
