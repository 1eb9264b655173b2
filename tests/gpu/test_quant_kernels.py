"""Every quantized-op kernel but the weight-only GEMMs (test_wo_kernels.py) against its op's
torch reference on the GPU, at real shapes: fp32/fp16/bf16 activations; fp8 where the GPU has
it (sm_89+)."""
import pytest
import torch
import triton

import quant_kernel_checks as qc
from kernel_checks import TOL
from kiln.builder.kernels.gemm import SMALL_CONFIGS_FP8

pytestmark = pytest.mark.gpu
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = [F32, F16, BF16]
ROW_SHAPES = [(1, 576), (7, 2048), (300, 4096), (33, 5120), (4, 8192)]
FP8, INT8 = qc.FP8, qc.INT8


@pytest.fixture(autouse=True)
def on_gpu(sm):
    torch.manual_seed(0)


@pytest.fixture(params=[FP8, INT8], ids=["fp8", "int8"])
def qdtype(request, sm):
    if request.param == FP8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", ROW_SHAPES + [(5, 14336)])
def test_quantize_is_exact(dtype, rows, width, qdtype):
    if qdtype == FP8:
        assert qc.check_quantize_fp8("cuda", dtype, rows, width, seed=rows) == 0.0
    else:
        assert qc.check_quantize_int8("cuda", dtype, rows, width, seed=rows) == 0.0
        assert qc.check_quantize_int8("cuda", dtype, rows, width, seed=rows + 1, smooth=True) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", ROW_SHAPES)
@pytest.mark.parametrize("add", [False, True], ids=["rmsnorm", "add_rmsnorm"])
def test_rmsnorm_quant(dtype, rows, width, add, qdtype):
    err = qc.check_rmsnorm_quant("cuda", dtype, rows, width, seed=rows, qdtype=qdtype, add=add)
    assert err <= qc.QFLIP


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(1, 14336), (65, 8960), (300, 1536), (3, 28672)])
@pytest.mark.parametrize("smooth", [False, True])
def test_silu_mul_quant(dtype, rows, width, smooth, qdtype):
    if qdtype == FP8 and smooth:
        pytest.skip("fp8 takes a scale, not a smoother")
    err = qc.check_silu_mul_quant("cuda", dtype, rows, width, seed=rows, qdtype=qdtype,
                                  smooth=smooth)
    assert err <= qc.QFLIP


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 16, 17, 128])
@pytest.mark.parametrize("n,k,bias", [(4096, 4096, False), (6144, 4096, True), (576, 1536, True)])
def test_linear_w8a8(dtype, m, n, k, bias):
    assert qc.check_linear_w8a8("cuda", dtype, m, n, k, seed=m, bias=bias) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("n,k,bias", [(6144, 4096, False), (4096, 14336, False), (576, 1536, True)])
@pytest.mark.parametrize("config", range(len(SMALL_CONFIGS_FP8)))
def test_linear_fp8_small_m(dtype, m, n, k, bias, config):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    err = qc.check_linear_fp8_small_m("cuda", dtype, m, n, k, seed=m + n, config=config, bias=bias)
    assert err < _fp8_small_m_bound(dtype, config), f"error {err:.2e}"


# (rows, a SWAP configuration) whose pipeline fits shared memory at BLOCK_M the next power of two
# of the rows: configuration 4's four stages of 256 rows need 320 KiB.
ONE_BLOCK = [(40, c) for c, cfg in enumerate(SMALL_CONFIGS_FP8) if cfg[4]] + [(100, 4), (167, 5)]


@pytest.mark.parametrize("m,config", ONE_BLOCK)
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336)])
def test_fp8_small_m_one_block_of_rows(m, n, k, config):
    """The SWAP configurations with every row in one program (BLOCK_M the next power of two),
    as tests/gpu/gemm_sweep.py --m times them."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    err = qc.check_linear_fp8_small_m("cuda", torch.bfloat16, m, n, k, seed=m + n, config=config,
                                      block_m=triton.next_power_of_2(m))
    assert err < _fp8_small_m_bound(torch.bfloat16, config), f"error {err:.2e}"


def _fp8_small_m_bound(dtype, config: int) -> float:
    # SWAP multiplies in e4m3 on Hopper's tensor cores, whose sums within one MMA keep fewer
    # bits than float32 (measured up to 4.7e-5 on the H200; cuBLASLt's FP8 GEMM 1.3e-4).
    return max(TOL[dtype], 1e-4) if SMALL_CONFIGS_FP8[config][4] else TOL[dtype]
