"""The weight-only GEMMs (int4 AWQ/GPTQ/Q4_1 groups, int8 per channel) on the GPU against
the op's torch reference: every path the plan offers (GEMV, split-K, the int4 tensor-core
kernel, cuBLASLt on the dequantized weight) and every configuration of each."""
import pytest
import torch

import quant_kernel_checks as qc
from kernel_checks import TOL
from kiln.builder.kernels import quant_gemm

pytestmark = pytest.mark.gpu
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = [F32, F16, BF16]


@pytest.fixture(autouse=True)
def on_gpu(sm):
    torch.manual_seed(0)


# (bits, group, offset, pre_quant_scale, bias): AWQ (float group offsets), GPTQ (symmetric),
# int4 with 64-wide groups and offsets, Q4_1's groups of 32 with offsets, int8 weight-only
# per channel.
WO = {"awq": (4, 128, True, True, False), "gptq": (4, 128, False, False, True),
      "int4-g64": (4, 64, True, False, False), "q4_1": (4, 32, True, False, True),
      "int8": (8, None, False, True, True)}


# (M, path): the GEMV for 1, 2 and groups of 4 rows (3 runs as 4, 13 as 4 groups), split-K up
# to 16, cuBLASLt's dequantized weight above (torch's matmul here).
WO_PATHS = [(1, "gemv"), (2, "gemv"), (3, "gemv"), (4, "gemv"), (13, "gemv"), (1, "splitk"),
            (16, "splitk"), (17, "dequant"), (128, "dequant")]


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("m,path", WO_PATHS)
@pytest.mark.parametrize("variant", list(WO))
def test_linear_wo_4096(dtype, m, path, variant):
    bits, group, zp, pqs, bias = WO[variant]
    err = qc.check_linear_wo("cuda", dtype, m, 4096, 4096, seed=m, bits=bits,
                             group=group or 4096, offset=zp, pqs=pqs, bias=bias, path=path)
    assert err < TOL[dtype]


@pytest.mark.parametrize("config", range(len(quant_gemm.WO_GEMV_M1)))
@pytest.mark.parametrize("n,k", [(4096, 4096), (576, 1536), (4096, 14336)])
@pytest.mark.parametrize("variant", ["awq", "q4_1", "int8"])
def test_linear_wo_gemv_configs(variant, n, k, config):
    """Each one-row GEMV configuration the plan offers, on Llama's widths and SmolLM2's, where
    K is not a multiple of the tile."""
    bits, group, zp, pqs, bias = WO[variant]
    cfg = quant_gemm.WO_GEMV_M1[config]
    for dtype in (F32, BF16):
        err = qc.check_linear_wo("cuda", dtype, 1, n, k, seed=config, bits=bits,
                                 group=group or k, offset=zp, pqs=pqs, bias=bias, path="gemv",
                                 gemv_config=cfg)
        assert err < TOL[dtype], (dtype, cfg, err)


SMALL_MMA = [i for i, cfg in enumerate(quant_gemm.WO_MMA) if cfg[5] <= quant_gemm.SMALL_M]
ROWS_MMA = [i for i in range(len(quant_gemm.WO_MMA)) if i not in SMALL_MMA]


@pytest.mark.parametrize("config", SMALL_MMA)
@pytest.mark.parametrize("m,n,k,splits", [(1, 4096, 4096, None), (1, 28672, 4096, None),
                                          (8, 6144, 4096, None), (16, 4096, 14336, None),
                                          (1, 576, 1536, None), (3, 4160, 4096, 7)])
@pytest.mark.parametrize("variant", ["awq", "gptq", "int4-g64"])
def test_linear_wo_mma(variant, m, n, k, splits, config):
    """The int4 tensor-core kernel, each configuration the plan offers for M <= 16, on Llama's
    and SmolLM2's widths, S as the plan picks it, none, and 7 (uneven shares)."""
    check_mma(variant, m, n, k, splits, config)


@pytest.mark.parametrize("config", ROWS_MMA)
@pytest.mark.parametrize("m,n,k,splits", [(1, 6144, 4096, None), (32, 4096, 4096, None),
                                          (100, 28672, 4096, None), (256, 4096, 14336, None),
                                          (77, 576, 1536, 3)])
@pytest.mark.parametrize("variant", ["awq", "gptq", "int4-g64"])
def test_linear_wo_mma_row_blocks(variant, m, n, k, splits, config):
    """The configurations for more rows (blocks of 32-64 rows, warpgroup MMAs): one row, whole
    and partial row blocks, split K as the plan picks it and forced to 3 over 2 row blocks."""
    check_mma(variant, m, n, k, splits, config)


def check_mma(variant, m, n, k, splits, config):
    bits, group, zp, pqs, bias = WO[variant]
    cfg = quant_gemm.WO_MMA[config]
    if m > cfg[5]:
        pytest.skip(f"configuration {cfg} takes M <= {cfg[5]}")
    for dtype in (F16, BF16):
        err = qc.check_linear_wo("cuda", dtype, m, n, k, seed=config + m, bits=bits,
                                 group=group, offset=zp, pqs=pqs, bias=bias, path="mma",
                                 num_splits=splits, mma_config=cfg)
        assert err < TOL[dtype], (dtype, cfg, err)


@pytest.mark.parametrize("config", SMALL_MMA)
@pytest.mark.parametrize("m,n,splits", [(1, 28672, None), (5, 8288, None), (16, 3072, 3)])
def test_wo_mma_glu_equals_wo_mma_then_silu_mul(m, n, splits, config):
    """The int4 tensor-core kernel with the SiLU-mul inside (a gate/up GEMM's epilogue) gives
    the kernel's own output then silu_mul bit for bit, in each configuration for up to 16 rows:
    Llama's gate/up, an odd number of pairs in the last column block, K split unevenly."""
    if m > quant_gemm.WO_MMA[config][5]:
        pytest.skip(f"configuration {quant_gemm.WO_MMA[config]} takes fewer rows")
    for dtype in (F16, BF16):
        err = qc.check_wo_glu("cuda", dtype, m, n, 4096, seed=config + m, config=config,
                              bias=m == 5, splits=splits)
        assert err == 0.0, (dtype, quant_gemm.WO_MMA[config], err)


@pytest.mark.parametrize("config", [2, len(quant_gemm.WO_MMA) - 1])
def test_linear_wo_mma_counts_return_to_zero(config):
    """Split programs count themselves in a workspace the plan reuses: after each launch the
    counts are 0 again, and a second launch gives the same bits (three row blocks of the
    configurations for more rows)."""
    cfg = quant_gemm.WO_MMA[config]
    m = min(cfg[5], 2 * cfg[4] + 5)
    g = torch.Generator().manual_seed(5)
    w, scales, offsets = qc.wo_weight(g, 4096, 4096, 4, 128, True, BF16)
    w, scales, offsets = w.cuda(), scales.cuda(), offsets.cuda()
    x = torch.randn(m, 4096, generator=g).bfloat16().cuda()
    splits = 5
    space = (torch.empty(splits * m * 4096, device="cuda"),
             torch.zeros(-(-m // cfg[4]) * 4096 // cfg[0], device="cuda", dtype=torch.int32))
    outs = [quant_gemm.linear_wo(x, w, scales, 4, 128, offsets, path="mma", mma_config=cfg,
                                 num_splits=splits, workspace=space) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert not space[1].any()
    ref = quant_gemm.linear_wo(x, w, scales, 4, 128, offsets, path="dequant")
    assert (outs[0].float() - ref.float()).abs().max() <= 0.02 * ref.float().abs().max()


@pytest.mark.parametrize("m,splits,path", [(1, 1, None), (4, 7, None), (16, 16, None),
                                           (5, None, None), (40, None, None), (1, None, "gemv"),
                                           (3, None, "gemv")])
@pytest.mark.parametrize("variant", list(WO))
def test_linear_wo_splits_and_odd_shapes(m, splits, path, variant):
    """SmolLM2's width (N=576), K=1472 (not a multiple of BLOCK_K) where the groups allow it,
    split counts forced or picked as the plan picks them, float32 and bfloat16."""
    bits, group, zp, pqs, bias = WO[variant]
    k = 1536 if group == 128 else 1472
    for dtype in (F32, BF16):
        err = qc.check_linear_wo("cuda", dtype, m, 576, k, seed=m, bits=bits, group=group or k,
                                 offset=zp, pqs=pqs, bias=bias, num_splits=splits,
                                 path=path)
        assert err < TOL[dtype], (dtype, err)


def test_dequantize_is_exact():
    """The weight cuBLASLt multiplies for M > 16 is the reference's, bit for bit."""
    from kiln.quantize import pack
    g = torch.Generator().manual_seed(3)
    for dtype in DTYPES:
        for variant, (bits, group, zp, _, _) in WO.items():
            w, scales, offsets = qc.wo_weight(g, 1000, 1536, bits, group or 1536, zp, dtype)
            ref = pack.dequantize_weight(w, bits, scales, group or 1536, offsets).to(dtype)
            out = quant_gemm.dequantize(w.cuda(), scales.cuda(), bits, group or 1536,
                                        None if offsets is None else offsets.cuda())
            assert torch.equal(out.cpu(), ref), (dtype, variant)
