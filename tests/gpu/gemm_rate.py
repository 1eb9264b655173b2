"""Rate of cuBLAS's own choice (torch.matmul, bfloat16) on a Llama-3.1-8B layer's GEMM shapes
at the M of a throughput run's steps: the ceiling Kiln's cuBLASLt GEMMs are set against.

Each figure is the median of 3 runs of 20 back-to-back GEMMs between two CUDA events, on
random operands (never zeros: the tensor cores draw less power on them).

    python tests/gpu/gemm_rate.py [--m 8192,2048,3000] [--square 8192]
"""
from __future__ import annotations

import argparse

import torch
from attention_sweep import time_launch
from gemm_sweep import SHAPES as LAYER

SHAPES = {**LAYER, "lm_head": (128256, 4096)}  # (N, K)


def row(name: str, m: int, n: int, k: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(m + n + k)
    a = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16)
    t = time_launch(lambda: a @ w.T)
    print(f"{name:<9}{m:>7}{n:>8}{k:>7}{t * 1e6:>10.1f}{2 * m * n * k / t / 1e12:>9.1f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="8192,2048,3000", help="rows (tokens a step), comma list")
    parser.add_argument("--square", type=int, default=8192, help="also M = N = K of this (0: not)")
    args = parser.parse_args()
    print(f"{'shape':<9}{'M':>7}{'N':>8}{'K':>7}{'us':>10}{'TFLOP/s':>9}")
    for m in (int(v) for v in args.m.split(",") if v):
        for name, (n, k) in SHAPES.items():
            row(name, m, n, k)
    if args.square:
        row("square", args.square, args.square, args.square)


if __name__ == "__main__":
    main()
