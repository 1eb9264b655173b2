"""The engine's tma_gemm_kernel (its tile loop strided by the programs launched, PDL compiled
in as for an SM 90 plan) against the sweep's glu_gemm_kernel with PAIRS (strided by the SM count
as a constant), same tiles, at a 128/128 run's rows of the Llama-3.1-8B gate/up shape: in a
128/128 run the engine's took ~13% longer than the sweep's at ~2,048 rows (721 against 638 us).

    bash docs/results/tma-glu-2026-12-07/engine_vs_sweep.sh   (on a GPU; nothing built)
"""
import sys
from pathlib import Path

import torch
import triton

from kiln.builder.kernels import tma_gemm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "glu-gemm-2026-12-07"))
from glu_sweep import I_FULL, K_FULL, launch, paired, timed  # noqa: E402

triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                             device="cuda"))
sms = torch.cuda.get_device_properties(0).multi_processor_count
print(torch.cuda.get_device_name(), sms, "SMs")
g = torch.Generator(device="cuda").manual_seed(0)
w = paired((torch.randn(2 * I_FULL, K_FULL, device="cuda", generator=g) * 0.02).bfloat16())
bm, bn, bk, stages, warps, group_m = tma_gemm.CONFIG_GLU
for m in (2048, 3008, 8192):
    x = torch.randn(m, K_FULL, device="cuda", generator=g).bfloat16()
    a = torch.empty(m, I_FULL, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    grid = (min(sms, triton.cdiv(m, bm) * (I_FULL // bn)),)
    for pdl in (0, 1):
        engine = lambda: tma_gemm.tma_gemm_kernel[grid](  # noqa: E731
            a, x, w, m, **tma_gemm.constexprs(2 * I_FULL, K_FULL, K_FULL, I_FULL, True), PDL=pdl,
            num_warps=warps, num_stages=stages)
        print(f"M {m}  engine's kernel, PDL {pdl}: {timed(engine) * 1e6:8.1f} us")
    sweep = lambda: launch(x, w, b, (bm, bn, bk, stages, warps, group_m, 0), True, sms,  # noqa: E731
                           pairs=True)
    print(f"M {m}  sweep's kernel:         {timed(sweep) * 1e6:8.1f} us  same: {torch.equal(a, b)}")
