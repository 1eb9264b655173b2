"""silu_mul_kernel over [gate; up] halves against gate/up pairs (PAIRS), at a 128/128 run's rows
of the Llama-3.1-8B shape (I 14,336, bfloat16): the SiLU-mul the steps run after cuBLASLt.

    bash docs/results/tma-glu-2026-12-07/silu_pairs.sh   (on a GPU; nothing built)
"""
import sys
from pathlib import Path

import torch
import triton

from kiln.builder.kernels.elementwise import BLOCK, WARPS, silu_mul_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "glu-gemm-2026-12-07"))
from glu_sweep import timed  # noqa: E402  (median seconds of 20 launches, CUDA events)

I = 14336


print(torch.cuda.get_device_name())
for m in (3008, 8192):
    x = torch.randn(m, 2 * I, device="cuda").bfloat16()
    paired = torch.stack((x[:, :I], x[:, I:]), 2).reshape(m, 2 * I)
    outs = []
    for pairs, src in ((0, x), (1, paired)):
        out = torch.empty(m, I, device="cuda", dtype=torch.bfloat16)
        launch = lambda: silu_mul_kernel[(m, triton.cdiv(I, BLOCK))](  # noqa: E731
            out, src, 2 * I, I, I, BLOCK, pairs, num_warps=WARPS)
        us = timed(launch) * 1e6
        outs.append(out)
        gbs = 3 * m * I * 2 / us / 1e3
        print(f"M {m}  PAIRS {pairs}: {us:8.1f} us  {gbs:7.1f} GB/s")
    print(f"M {m}  equal: {torch.equal(outs[0], outs[1])}")
