"""The residual add inside the GEMM before it, measured before it is built: at a 128/128 run's
row counts (decode-only steps ~3,008 rows, steps with prompt tokens ~8,192), over 8 layers'
weights of the Llama-3.1-8B o-projection (N 4,096, K 4,096) and down projection (N 4,096,
K 14,336), bfloat16, us a layer:

- A (the engine now): out = x @ w.T (cuBLAS), then add_rmsnorm_kernel reads out and the
  residual, writes their sum and its RMSNorm;
- B: the residual updated in place by the GEMM (res += x @ w.T: cuBLAS with beta 1, C = D =
  res), then rmsnorm_kernel reads the sum and writes its RMSNorm.

Each after ~2 s of both in turn (the GPU near its power limit, as in a run), the median of 20
passes, A and B interleaved; the parts alone beside them. B rounds once (x @ w.T + res), A
twice: the largest difference of the sums is printed.

    bash docs/results/residual-prefetch-2026-12-07/run.sh   (on a GPU; nothing built)
"""
import time

import torch

from kiln.builder.kernels.norm import add_rmsnorm_kernel, rmsnorm_kernel, row_warps

H, LAYERS, EPS = 4096, 8, 1e-5


def timed(fn, passes: int = 20) -> float:
    times = []
    for _ in range(passes):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / LAYERS)
    return sorted(times)[passes // 2]


def main() -> None:
    print(torch.cuda.get_device_name())
    g = torch.Generator(device="cuda").manual_seed(0)
    gamma = (1 + 0.1 * torch.randn(H, device="cuda", generator=g)).bfloat16()
    for name, k in (("o", 4096), ("down", 14336)):
        ws = [(torch.randn(H, k, device="cuda", generator=g) * k ** -0.5).bfloat16()
              for _ in range(LAYERS)]
        for m in (3008, 8192):
            x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
            res0 = torch.randn(m, H, device="cuda", generator=g).bfloat16()
            y = torch.empty(m, H, device="cuda", dtype=torch.bfloat16)
            total = torch.empty_like(y)
            normed = torch.empty_like(y)
            res = res0.clone()
            block = H
            warps = row_warps(block)

            def mm():
                for w in ws:
                    torch.mm(x, w.T, out=y)

            def add_norm():
                for _ in ws:
                    add_rmsnorm_kernel[(m,)](normed, total, y, res0, gamma, EPS, H, H, H, H, H,
                                             block, num_warps=warps)

            def way_a():
                for w in ws:
                    torch.mm(x, w.T, out=y)
                    add_rmsnorm_kernel[(m,)](normed, total, y, res0, gamma, EPS, H, H, H, H, H,
                                             block, num_warps=warps)

            def addmm():
                for w in ws:
                    res.addmm_(x, w.T)

            def norm():
                for _ in ws:
                    rmsnorm_kernel[(m,)](normed, res, gamma, EPS, H, H, H, block,
                                         num_warps=warps)

            def way_b():
                for w in ws:
                    res.addmm_(x, w.T)
                    rmsnorm_kernel[(m,)](normed, res, gamma, EPS, H, H, H, block,
                                         num_warps=warps)

            # The two sums of one layer, from the same residual.
            torch.mm(x, ws[0].T, out=y)
            add_rmsnorm_kernel[(m,)](normed, total, y, res0, gamma, EPS, H, H, H, H, H, block,
                                     num_warps=warps)
            res.copy_(res0)
            res.addmm_(x, ws[0].T)
            diff = (res.float() - total.float()).abs().max().item()
            differ = (res != total).float().mean().item()
            for fn in (mm, add_norm, way_a, addmm, norm, way_b):
                fn()
            torch.cuda.synchronize()
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                way_a(), way_b()
                torch.cuda.synchronize()
            ta, tb = [], []
            for _ in range(3):
                ta.append(timed(way_a, 7))
                tb.append(timed(way_b, 7))
            a, b = sorted(ta)[1], sorted(tb)[1]
            parts = {f.__name__: timed(f, 7) for f in (mm, add_norm, addmm, norm)}
            print(f"{name:4s} M {m:5d}  A {a:8.1f}  B {b:8.1f} us a layer ({100 * (a - b) / a:+.1f}%)"
                  f"  parts: " + "  ".join(f"{n} {v:.1f}" for n, v in parts.items())
                  + f"  sums differ at {100 * differ:.2f}% of values, by at most {diff:.4g}")


if __name__ == "__main__":
    main()
