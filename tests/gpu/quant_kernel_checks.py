"""Each quantized-op kernel (kiln.builder.kernels.quant, quant_gemm) against its op's torch
reference (kiln.builder.ops.quant) on fresh seeded random inputs.

Shared by tests/gpu/test_quant_kernels.py and test_wo_kernels.py (on the GPU) and
tests/builder/test_kernels_quant_interpret.py (Triton's interpreter on the CPU). Outputs are
poisoned first (NaN, or random codes), so an element the kernel does not write fails.

Quantized outputs are compared code by code (`code_err`): the fraction of codes that differ
from the reference, and no code may be more than one step away. Given the same float input the
kernels round exactly as the reference does (0 differences: quantize_fp8, quantize_int8); a
fused norm or SiLU whose float value differs from torch's in the last bit (GPU rsqrt / exp)
may move a rare code by one step (QFLIP). GEMM outputs: ||out - ref|| / ||ref|| (TOL).
"""
from __future__ import annotations

import torch

from kernel_checks import TOL, _rand, _ref, rel_err
from kiln.quantize import pack

FP8, INT8 = "float8_e4m3fn", "int8"
QFLIP = 2e-3  # at most this fraction of one-step code differences in fused kernels


def _codes(q: torch.Tensor) -> torch.Tensor:
    """Codes as integers ordered like their values (fp8: sign-magnitude -> signed)."""
    q = q.cpu()
    if q.dtype == torch.float8_e4m3fn:
        b = q.view(torch.uint8).int()
        return torch.where(b >= 128, -(b & 0x7F), b & 0x7F)
    return q.int()


def code_err(q: torch.Tensor, ref: torch.Tensor) -> float:
    """The fraction of codes that differ; AssertionError where one is more than a step off."""
    assert q.shape == ref.shape and q.dtype == ref.dtype, (q.shape, q.dtype, ref.shape, ref.dtype)
    diff = (_codes(q) - _codes(ref)).abs()
    worst = int(diff.max()) if diff.numel() else 0
    assert worst <= 1, f"a code is {worst} steps from the reference (unwritten or wrong)"
    return (diff > 0).double().mean().item()


def _poison(gen, shape, dtype, device) -> torch.Tensor:
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8).to(device)
    if dtype == torch.float8_e4m3fn:
        return torch.full(shape, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).to(device)
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _outs(gen, qdtype: str, rows: int, width: int, device, extra=()) -> list[torch.Tensor]:
    q = _poison(gen, (rows, width), torch.float8_e4m3fn if qdtype == FP8 else torch.int8, device)
    rs = [] if qdtype == FP8 else [_poison(gen, (rows,), torch.float32, device)]
    return [q, *rs, *(_poison(gen, s, d, device) for s, d in extra)]


def _compare(outs, refs, dtype) -> float:
    """code_err of the codes; other outputs (row scales, sums) must be within TOL[dtype]."""
    for out, ref in zip(outs[1:], refs[1:]):
        floats = rel_err(out, ref)
        assert floats <= TOL[dtype], f"row scale or sum off by {floats} (bound {TOL[dtype]})"
    return code_err(outs[0], refs[0])


def check_quantize_fp8(device, dtype, rows, width, seed):
    from kiln.builder.kernels import quant
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, width + 5), dtype, device, 3.0)[:, 2:2 + width]  # strided rows
    scale = (x.abs().max().float() * 0.8 / 448).reshape(1).to(device)  # some values saturate
    outs = quant.quantize_fp8(x, scale, out=_outs(g, FP8, rows, width, device))
    return code_err(outs[0], _ref("quantize_fp8", [x, scale])[0])


def check_quantize_int8(device, dtype, rows, width, seed, smooth=False):
    from kiln.builder.kernels import quant
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, width), dtype, device, 2.0)
    x[0] = 0  # an all-zero row: q = 0, row_scale = 1 / 127
    sm = [(torch.rand(width, generator=g) + 0.5).to(device)] if smooth else []
    outs = quant.quantize_int8(x, *sm, out=_outs(g, INT8, rows, width, device))
    refs = _ref("quantize_int8", [x, *sm], n_out=2)
    return max(code_err(outs[0], refs[0]), rel_err(outs[1], refs[1]))


def check_rmsnorm_quant(device, dtype, rows, width, seed, qdtype, add=False):
    from kiln.builder.kernels import quant
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, width), dtype, device)
    res = _rand(g, (rows, width), dtype, device, 3.0) if add else None
    w = _rand(g, (width,), dtype, device, 0.2, 1.0)
    scale = [torch.tensor([2.5 / 448]).to(device)] if qdtype == FP8 else []
    extra = [((rows, width), dtype)] if add else []
    outs = quant.rmsnorm_quant(x, w, 1e-5, qdtype, *scale, res=res,
                               out=_outs(g, qdtype, rows, width, device, extra))
    op = "add_rmsnorm_quant" if add else "rmsnorm_quant"
    inputs = [x, res, w, *scale] if add else [x, w, *scale]
    refs = _ref(op, inputs, {"eps": 1e-5, "qdtype": qdtype}, n_out=len(outs))
    return _compare(outs, refs, dtype)


def check_silu_mul_quant(device, dtype, rows, width, seed, qdtype, smooth=False):
    from kiln.builder.kernels import quant
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, 2 * width), dtype, device, 2.0)
    if qdtype == FP8:
        extra = [torch.tensor([3.0 / 448]).to(device)]
    else:
        extra = [(torch.rand(width, generator=g) + 0.5).to(device)] if smooth else []
    outs = quant.silu_mul_quant(x, qdtype, *extra, out=_outs(g, qdtype, rows, width, device))
    refs = _ref("silu_mul_quant", [x, *extra], {"qdtype": qdtype}, n_out=len(outs))
    return _compare(outs, refs, dtype)


def check_linear_w8a8(device, dtype, m, n, k, seed, bias=True):
    from kiln.builder.kernels import quant_gemm
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8).to(device)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    row_scale = ((torch.rand(m, generator=g) + 0.5) / 127).to(device)
    w_scale = ((torch.rand(n, generator=g) + 0.5) / 127 / k ** 0.5).to(device)
    b = [_rand(g, (n,), dtype, device)] if bias else []
    out = _poison(g, (m, n), dtype, device)
    quant_gemm.linear_w8a8(q, row_scale, w, w_scale, *b, out=out)
    name = str(dtype).split(".")[1]
    (ref,) = _ref("linear_w8a8", [q, row_scale, w, w_scale, *b], {"dtype": name})
    return rel_err(out, ref)


def check_linear_fp8_small_m(device, dtype, m, n, k, seed, config, bias=True, block_m=None):
    """linear_fp8's M <= 16 alternative (kernels/gemm.py, SCALED) on FP8 operands made by torch;
    `block_m`: the rows one program takes (all of them: m <= block_m; None: gemm.SMALL_M)."""
    from kiln.builder.kernels import gemm
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn((m, k), generator=g) * 40).to(torch.float8_e4m3fn)
    w = (torch.randn((n, k), generator=g) * 40).to(torch.float8_e4m3fn)
    x_scale = (torch.rand(1, generator=g) + 0.5) / 40
    w_scale = (torch.rand(1, generator=g) + 0.5) / 40 / k ** 0.5
    b = [_rand(g, (n,), dtype, device)] if bias else []
    out = _poison(g, (m, n), dtype, device)
    gemm.linear_small_m(q.to(device), w.to(device), *b, config=config, out=out,
                        scales=(x_scale.to(device), w_scale.to(device)),
                        block_m=block_m or gemm.SMALL_M)
    name = str(dtype).split(".")[1]
    (ref,) = _ref("linear_fp8", [q, w, x_scale, w_scale, *b], {"dtype": name})
    return rel_err(out, ref)


def wo_weight(gen, n, k, bits, group, offset, dtype):
    """(w, scales [n, k / group] in dtype, offsets in dtype or None), quantized as
    quantize_linears does: asymmetric groups from each group's minimum to its maximum (nearly
    every offset a nonzero float: one within float16's smallest step of 0 rounds to 0), or
    symmetric ones."""
    wf = torch.randn((n, k), generator=gen) * 0.05 + torch.rand((n, 1), generator=gen) * 0.02
    if offset:
        scales, offsets = pack.int4_min_max(wf, group)
        scales, offsets = scales.to(dtype).float(), offsets.to(dtype).float()
        assert float((offsets != 0).float().mean()) > 0.99
    else:
        bound = pack.INT4_MAX if bits == 4 else pack.INT8_MAX
        grouped = wf.reshape(n, k // group, group)
        scales = pack.scale_from_amax(grouped.abs().amax(-1), bound).to(dtype).float()
        offsets = None
    w = pack.quantize_weight(wf, bits, scales, group, offsets)
    return w, scales.to(dtype), None if offsets is None else offsets.to(dtype)


def check_linear_wo(device, dtype, m, n, k, seed, bits, group, offset=False, pqs=False,
                    bias=False, num_splits=None, path=None, gemv_config=None, mma_config=None):
    from kiln.builder.kernels import quant_gemm
    g = torch.Generator().manual_seed(seed)
    w, scales, offsets = wo_weight(g, n, k, bits, group, offset, dtype)
    x = _rand(g, (m, k + 3), dtype, "cpu")[:, :k]  # strided rows
    p = (torch.rand(k, generator=g) + 0.5) if pqs else None
    b = _rand(g, (n,), dtype, "cpu") if bias else None
    inputs = [x, w, scales] + [t for t in (offsets, p, b) if t is not None]
    attrs = {"bits": bits, "group_size": group, "offset": offset,
             "pre_quant_scale": pqs, "bias": bias}
    (ref,) = _ref("linear_wo", inputs, attrs)
    dev = [None if t is None else t.to(device) for t in (x, w, scales, offsets, p, b)]
    out = _poison(g, (m, n), dtype, device)
    quant_gemm.linear_wo(dev[0], dev[1], dev[2], bits, group, dev[3], dev[4], dev[5],
                         num_splits=num_splits, out=out, path=path, gemv_config=gemv_config,
                         mma_config=mma_config)
    return rel_err(out, ref)


def check_wo_glu(device, dtype, m, n, k, seed, config, offset=True, bias=False, splits=None):
    """wo_mma_kernel with the SiLU-mul inside (GLU) against the same kernel then the SiLU-mul
    (elementwise.silu_mul): ||out - ref|| / ||ref|| (0 on the GPU, the same arithmetic; Triton's
    interpreter multiplies tiles with numpy, whose sums may round differently by a column's
    place in the tile, which GLU changes). Nothing is written beyond the rows."""
    from kiln.builder.kernels import elementwise, quant_gemm
    g = torch.Generator().manual_seed(seed)
    w, scales, offsets = wo_weight(g, n, k, 4, 128, offset, dtype)
    x = _rand(g, (m, k), dtype, "cpu")
    b = _rand(g, (n,), dtype, "cpu") if bias else None
    x, w, scales = x.to(device), w.to(device), scales.to(device)
    offsets = None if offsets is None else offsets.to(device)
    b = None if b is None else b.to(device)
    cfg = quant_gemm.WO_MMA[config]
    common = dict(bias=b, path="mma", mma_config=cfg, num_splits=splits)
    y = quant_gemm.linear_wo(x, w, scales, 4, 128, offsets, **common)
    out = torch.full((m + 1, n // 2), float("nan"), dtype=dtype, device=device)
    quant_gemm.linear_wo(x, w, scales, 4, 128, offsets, out=out[:m], glu=True, **common)
    assert torch.isnan(out[m:].float()).all(), "the kernel wrote beyond its rows"
    return rel_err(out[:m], elementwise.silu_mul(y))


def check_dequantize(device, dtype, n, k, seed, bits, group, offset=False):
    """wo_dequant_kernel against pack.dequantize_weight in dtype: the fraction of elements
    that differ (0: bit for bit, as cuBLASLt's operand must be)."""
    from kiln.builder.kernels import quant_gemm
    g = torch.Generator().manual_seed(seed)
    w, scales, offsets = wo_weight(g, n, k, bits, group, offset, dtype)
    ref = pack.dequantize_weight(w, bits, scales, group, offsets).to(dtype)
    out = quant_gemm.dequantize(w.to(device), scales.to(device), bits, group,
                                None if offsets is None else offsets.to(device))
    assert out.shape == ref.shape and out.dtype == ref.dtype
    return (out.cpu() != ref).double().mean().item()


# Cases the CPU interpreter runs in reasonable time: (name, check, kwargs, bound).
def interpreter_cases():
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases = []
    for dtype in (f32, f16, bf16):
        d = str(dtype).split(".")[1]
        cases += [
            (f"quantize_fp8-{d}", check_quantize_fp8, dict(dtype=dtype, rows=5, width=1300, seed=1), 0.0),
            (f"quantize_int8-{d}", check_quantize_int8, dict(dtype=dtype, rows=12, width=5000, seed=2), 0.0),
            (f"quantize_int8-smooth-{d}", check_quantize_int8,
             dict(dtype=dtype, rows=3, width=700, seed=3, smooth=True), 0.0),
        ]
        for qdtype in (FP8, INT8):
            q = "fp8" if qdtype == FP8 else "int8"
            cases += [
                (f"rmsnorm_quant-{q}-{d}", check_rmsnorm_quant,
                 dict(dtype=dtype, rows=5, width=576, seed=4, qdtype=qdtype), QFLIP),
                (f"add_rmsnorm_quant-{q}-{d}", check_rmsnorm_quant,
                 dict(dtype=dtype, rows=4, width=1000, seed=5, qdtype=qdtype, add=True), QFLIP),
                (f"silu_mul_quant-{q}-{d}", check_silu_mul_quant,
                 dict(dtype=dtype, rows=3, width=1500, seed=6, qdtype=qdtype, smooth=True), QFLIP),
            ]
        cases += [
            (f"linear_w8a8-small-{d}", check_linear_w8a8, dict(dtype=dtype, m=5, n=80, k=200, seed=7), TOL[dtype]),
            (f"linear_fp8-small_m-c0-{d}", check_linear_fp8_small_m,
             dict(dtype=dtype, m=3, n=72, k=1024, seed=14, config=0), TOL[dtype]),
            (f"linear_fp8-small_m-c1-{d}", check_linear_fp8_small_m,
             dict(dtype=dtype, m=16, n=40, k=200, seed=15, config=1, bias=False), TOL[dtype]),
            (f"linear_fp8-small_m-swap-c4-{d}", check_linear_fp8_small_m,
             dict(dtype=dtype, m=5, n=136, k=200, seed=16, config=4), TOL[dtype]),
            (f"linear_fp8-small_m-swap-c5-{d}", check_linear_fp8_small_m,
             dict(dtype=dtype, m=1, n=256, k=512, seed=17, config=5, bias=False), TOL[dtype]),
            (f"linear_fp8-small_m-swap-rows64-{d}", check_linear_fp8_small_m,
             dict(dtype=dtype, m=40, n=128, k=256, seed=22, config=4, block_m=64), TOL[dtype]),
            (f"linear_w8a8-large-{d}", check_linear_w8a8,
             dict(dtype=dtype, m=40, n=136, k=192, seed=8, bias=False), TOL[dtype]),
            (f"linear_wo-int4-awq-split3-{d}", check_linear_wo,
             dict(dtype=dtype, m=3, n=96, k=384, seed=9, bits=4, group=128, offset=True,
                  pqs=True, bias=True, num_splits=3), TOL[dtype]),
            (f"linear_wo-int4-g32-{d}", check_linear_wo,
             dict(dtype=dtype, m=2, n=72, k=320, seed=10, bits=4, group=32, num_splits=1), TOL[dtype]),
            (f"linear_wo-int4-large-{d}", check_linear_wo,
             dict(dtype=dtype, m=33, n=136, k=320, seed=11, bits=4, group=64, offset=True,
                  bias=True), TOL[dtype]),
            (f"linear_wo-int8-{d}", check_linear_wo,
             dict(dtype=dtype, m=1, n=64, k=200, seed=12, bits=8, group=200, pqs=True,
                  num_splits=2), TOL[dtype]),
            (f"linear_wo-int8-large-{d}", check_linear_wo,
             dict(dtype=dtype, m=20, n=130, k=200, seed=13, bits=8, group=200, bias=True), TOL[dtype]),
            (f"linear_wo-gemv-awq-{d}", check_linear_wo,
             dict(dtype=dtype, m=1, n=40, k=512, seed=16, bits=4, group=128, offset=True,
                  pqs=True, path="gemv"), TOL[dtype]),
            (f"linear_wo-gemv-gptq-2-{d}", check_linear_wo,
             dict(dtype=dtype, m=2, n=37, k=256, seed=17, bits=4, group=64, bias=True,
                  path="gemv"), TOL[dtype]),
            (f"linear_wo-gemv-groups-{d}", check_linear_wo,
             dict(dtype=dtype, m=9, n=24, k=256, seed=20, bits=4, group=128, offset=True,
                  pqs=True, path="gemv"), TOL[dtype]),
            (f"linear_wo-gemv-int8-3-{d}", check_linear_wo,
             dict(dtype=dtype, m=3, n=24, k=200, seed=18, bits=8, group=200, pqs=True,
                  bias=True, path="gemv"), TOL[dtype]),
            (f"linear_wo-int4-q4_1-split2-{d}", check_linear_wo,
             dict(dtype=dtype, m=4, n=72, k=320, seed=21, bits=4, group=32, offset=True,
                  bias=True, num_splits=2), TOL[dtype]),
            (f"linear_wo-gemv-q4_1-2-{d}", check_linear_wo,
             dict(dtype=dtype, m=2, n=40, k=256, seed=22, bits=4, group=32, offset=True,
                  bias=True, path="gemv"), TOL[dtype]),
            (f"linear_wo-gemv-wide-{d}", check_linear_wo,
             dict(dtype=dtype, m=1, n=40, k=1536, seed=25, bits=4, group=128, offset=True,
                  pqs=True, path="gemv", gemv_config=(8, 256, 8, 1)), TOL[dtype]),
            (f"linear_wo-gemv-narrow-int8-{d}", check_linear_wo,
             dict(dtype=dtype, m=1, n=24, k=200, seed=26, bits=8, group=200, bias=True,
                  path="gemv", gemv_config=(8, 16, 2, 1)), TOL[dtype]),
            (f"linear_wo-dequantize-exact-{d}", check_dequantize,
             dict(dtype=dtype, n=40, k=320, seed=23, bits=4, group=32, offset=True), 0.0),
            (f"linear_wo-dequantize-exact-symmetric-{d}", check_dequantize,
             dict(dtype=dtype, n=24, k=256, seed=24, bits=4, group=64), 0.0),
            (f"linear_wo-dequant-{d}", check_linear_wo,
             dict(dtype=dtype, m=5, n=48, k=256, seed=19, bits=4, group=32, offset=True,
                  pqs=True, path="dequant"), TOL[dtype]),
        ]
        if dtype != f32:  # the tensor-core int4 kernel takes 16-bit models
            cases += [
                (f"linear_wo-mma-awq-split3-{d}", check_linear_wo,
                 dict(dtype=dtype, m=3, n=72, k=512, seed=27, bits=4, group=128, offset=True,
                      pqs=True, bias=True, path="mma", num_splits=3), TOL[dtype]),
                (f"linear_wo-mma-g64-{d}", check_linear_wo,
                 dict(dtype=dtype, m=1, n=40, k=256, seed=28, bits=4, group=64, bias=True,
                      path="mma", num_splits=1, mma_config=(64, 32, 2, 3, 8, 8, False)),
                 TOL[dtype]),
                (f"linear_wo-mma-groups-split2-{d}", check_linear_wo,  # 4 groups a step
                 dict(dtype=dtype, m=5, n=72, k=1024, seed=29, bits=4, group=64, offset=True,
                      path="mma", num_splits=2, mma_config=(64, 64, 2, 3, 8, 8, False)),
                 TOL[dtype]),
                (f"linear_wo-mma-row-blocks-split2-{d}", check_linear_wo,  # 3 x 2 blocks
                 dict(dtype=dtype, m=40, n=72, k=512, seed=30, bits=4, group=128, offset=True,
                      path="mma", num_splits=2, mma_config=(64, 32, 4, 3, 16, 64, False)),
                 TOL[dtype]),
                # The scales after the MMAs: parts of one group (128: 32 halfwords, two a
                # step of 64; 64: 16, the step of 32 halved for K = 448), offsets, the
                # pre-quant scale and bias, K split unevenly.
                (f"linear_wo-mma-after-awq-split3-{d}", check_linear_wo,
                 dict(dtype=dtype, m=3, n=72, k=768, seed=31, bits=4, group=128, offset=True,
                      pqs=True, bias=True, path="mma", num_splits=3,
                      mma_config=(64, 64, 2, 3, 8, 8, True)), TOL[dtype]),
                (f"linear_wo-mma-after-g64-4-parts-{d}", check_linear_wo,  # 64 halfwords
                 dict(dtype=dtype, m=2, n=40, k=512, seed=36, bits=4, group=64, offset=True,
                      path="mma", num_splits=1, mma_config=(64, 64, 2, 3, 8, 8, True)),
                 TOL[dtype]),
                (f"linear_wo-mma-after-g64-{d}", check_linear_wo,
                 dict(dtype=dtype, m=1, n=40, k=448, seed=32, bits=4, group=64, bias=True,
                      path="mma", num_splits=1, mma_config=(32, 32, 1, 3, 8, 8, True)),
                 TOL[dtype]),
                # The SiLU-mul inside: a rounded-first and a scale-after configuration, K
                # split and not, an odd number of pairs in the last column block.
                (f"linear_wo-mma-glu-split3-{d}", check_wo_glu,
                 dict(dtype=dtype, m=3, n=144, k=512, seed=34, config=0, bias=True, splits=3),
                 TOL[dtype]),
                (f"linear_wo-mma-glu-after-{d}", check_wo_glu,
                 dict(dtype=dtype, m=1, n=80, k=256, seed=35, config=4, offset=False,
                      splits=1), TOL[dtype]),
                (f"linear_wo-mma-after-16-rows-{d}", check_linear_wo,
                 dict(dtype=dtype, m=16, n=40, k=1536, seed=33, bits=4, group=128, offset=True,
                      path="mma", num_splits=2, mma_config=(64, 32, 2, 3, 16, 16, True)),
                 TOL[dtype]),
            ]
    return cases


if __name__ == "__main__":  # TRITON_INTERPRET=1 python quant_kernel_checks.py -> JSON {name: [value, bound]}
    import json
    import sys
    results = {}
    for name, fn, kwargs, bound in interpreter_cases():
        try:
            results[name] = [fn("cpu", **kwargs), bound]
        except Exception as e:  # reported per case
            results[name] = [f"{type(e).__name__}: {e}", bound]
        print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps(results))
