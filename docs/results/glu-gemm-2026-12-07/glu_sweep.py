"""The gate/up GEMM of a Llama-3.1-8B-shaped layer at many rows, with the SiLU-mul after it:
cuBLASLt (torch.mm) then Kiln's `silu_mul_kernel`, against a persistent Triton GEMM that
writes silu(gate) * up itself (GLU: two accumulators a tile, the gate rows' and the up rows',
the [M, 2I] product never stored), and the same Triton GEMM without the SiLU-mul (to tell the
kernel's rate from the fusion's gain). TMA descriptors made in the kernel; with WS, Triton's
warp specialization of the tile loop.

    python docs/results/glu-gemm-2026-12-07/glu_sweep.py [--m 1024,3008,8192]
        [--glu 128:64:64:4:8:8:0,...] [--pairs 128:128:64:3:8:8:0,...]
        [--plain 128:256:64:3:8:8:0,...] [--others qkv,o,down] [--check]

Configurations BM:BN:BK:stages:warps:GROUP_M:WS (GLU's BN counts output columns: a tile reads
2 x BN weight rows). Prints us, TFLOP/s (of the gate/up product's 2 * M * 2I * K) and, for
GLU, the largest difference from cuBLASLt + silu_mul relative to its largest value.
With TRITON_INTERPRET=1 (no GPU) --check runs small shapes through Triton's interpreter.
"""
from __future__ import annotations

import argparse
import os

import torch
import triton
import triton.language as tl

from kiln.builder.kernels.tma_gemm import _tile  # GROUP_M row blocks at a time

I_FULL, K_FULL = 14336, 4096
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def glu_gemm_kernel(x_ptr, w_ptr, out_ptr, M, I: tl.constexpr, K: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, GLU: tl.constexpr,
                    WS: tl.constexpr, F32_DOT: tl.constexpr = 0, PAIRS: tl.constexpr = 0):
    """out = silu(x @ w[:I].T) * (x @ w[I:].T) with GLU (each product rounded to bfloat16
    first, the activation too, as cuBLASLt then silu_mul_kernel round), else out = x @ w.T.
    x [M, K], w [2I, K], out [M, I] or [M, 2I], all bfloat16, row-major. F32_DOT: the tiles
    widened to float32 before their products (Triton's interpreter multiplies bfloat16 tiles
    wrongly). PAIRS (with GLU): w's rows interleaved, row 2j gate j and row 2j + 1 up j, so one
    product of 2 x BN weight rows gives a tile's gates and ups in adjacent columns, which the
    accumulator's layout holds in the same thread."""
    OUT_N: tl.constexpr = I if GLU else 2 * I
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    W_ROWS: tl.constexpr = 2 * BN if PAIRS else BN
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[2 * I, K], strides=[K, 1],
                                       block_shape=[W_ROWS, BK])
    o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, OUT_N], strides=[OUT_N, 1],
                                       block_shape=[BM, BN])
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n: tl.constexpr = OUT_N // BN
    k_tiles: tl.constexpr = K // BK
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=True,
                            warp_specialize=WS):
        pid_m, pid_n = _tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc_g = tl.zeros((BM, W_ROWS), dtype=tl.float32)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            ok = ki * BK
            a = x_desc.load([om, ok])
            g = w_desc.load([on * 2 if PAIRS else on, ok])
            if F32_DOT:
                a = a.to(tl.float32)
                g = g.to(tl.float32)
            acc_g = tl.dot(a, g.T, acc_g)
            if GLU and not PAIRS:
                u = w_desc.load([I + on, ok])
                if F32_DOT:
                    u = u.to(tl.float32)
                acc_u = tl.dot(a, u.T, acc_u)
        if GLU:
            if PAIRS:
                gate, up = tl.split(tl.reshape(acc_g, (BM, BN, 2)))
            else:
                gate, up = acc_g, acc_u
            gate = gate.to(tl.bfloat16).to(tl.float32)
            up = up.to(tl.bfloat16).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(tl.bfloat16).to(tl.float32)
            o_desc.store([om, on], (act * up).to(tl.bfloat16))
        else:
            o_desc.store([om, on], acc_g.to(tl.bfloat16))


def launch(x, w, out, cfg, glu: bool, num_sms: int, pairs: bool = False):
    bm, bn, bk, stages, warps, group_m, ws = cfg
    i = w.shape[0] // 2
    tiles = triton.cdiv(x.shape[0], bm) * ((i if glu else 2 * i) // bn)
    glu_gemm_kernel[(min(num_sms, tiles),)](
        x, w, out, x.shape[0], i, x.shape[1], bm, bn, bk, group_m, num_sms, int(glu), bool(ws),
        int(INTERPRET), int(pairs), num_stages=stages, num_warps=warps)


def cublas_then_silu_mul(x, w, mid, out):
    from kiln.builder.kernels.elementwise import silu_mul_kernel
    torch.mm(x, w.t(), out=mid)
    i = out.shape[1]
    silu_mul_kernel[(x.shape[0], triton.cdiv(i, 1024))](out, mid, 2 * i, i, i, 1024)


def paired(w):
    """w's gate and up rows interleaved: row 2j gate j, row 2j + 1 up j."""
    i = w.shape[0] // 2
    return torch.stack((w[:i], w[i:]), 1).reshape(w.shape)


def reference(x, w):
    """The bfloat16 rounding of cuBLASLt then silu_mul, from a float32 product."""
    i = w.shape[0] // 2
    y = (x.float() @ w.float().t()).bfloat16().float()
    act = torch.nn.functional.silu(y[:, :i]).bfloat16().float()
    return (act * y[:, i:]).bfloat16()


def timed(fn, reps: int = 20) -> float:
    """Median seconds of fn over reps launches after two warm ones (CUDA events)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def configs(text: str):
    return [tuple(int(v) for v in c.split(":")) for c in text.split(",") if c]


def check_interpreted(glu_cfgs, pair_cfgs, plain_cfgs) -> None:
    """Small shapes through Triton's interpreter (TRITON_INTERPRET=1): every configuration's
    tiles, both products and the GLU epilogue, against the float32 reference."""
    g = torch.Generator().manual_seed(0)
    for m, i, k in ((64, 128, 128), (40, 256, 192)):
        x = torch.randn(m, k, generator=g).bfloat16()
        w = (torch.randn(2 * i, k, generator=g) * 0.1).bfloat16()
        want = reference(x, w)
        scale = want.float().abs().max().item()
        for cfg in glu_cfgs:
            small = (32, min(cfg[1], 64), 64, *cfg[3:])
            out = torch.empty(m, i, dtype=torch.bfloat16)
            launch(x, w, out, small, True, 4)
            err = (out.float() - want.float()).abs().max().item()
            assert err <= 0.02 * scale, (m, i, k, cfg, err, scale)
            print(f"interpreted GLU {m}x{i}x{k} {small}: max diff {err:.3g} of {scale:.3g}")
        for cfg in pair_cfgs:
            small = (32, min(cfg[1], 64), 64, *cfg[3:])
            out = torch.empty(m, i, dtype=torch.bfloat16)
            launch(x, paired(w), out, small, True, 4, pairs=True)
            err = (out.float() - want.float()).abs().max().item()
            assert err <= 0.02 * scale, (m, i, k, cfg, err, scale)
            print(f"interpreted GLU pairs {m}x{i}x{k} {small}: max diff {err:.3g} of {scale:.3g}")
        for cfg in plain_cfgs:
            small = (32, min(cfg[1], 64), 64, *cfg[3:])
            out = torch.empty(m, 2 * i, dtype=torch.bfloat16)
            launch(x, w, out, small, False, 4)
            want_plain = (x.float() @ w.float().t())
            err = (out.float() - want_plain).abs().max().item()
            assert err <= 0.02 * want_plain.abs().max().item(), (m, i, k, cfg, err)
            print(f"interpreted plain {m}x{2 * i}x{k} {small}: max diff {err:.3g}")


# The layer's other GEMMs as (N, K): out[M, N] = x[M, K] @ w.T.
OTHERS = {"qkv": (6144, 4096), "o": (4096, 4096), "down": (4096, 14336)}


def other_rows(name: str, m: int, cfgs, num_sms: int, g) -> None:
    """cuBLASLt against the plain Triton GEMM (w as [2 x N / 2, K]) on one of OTHERS."""
    n, k = OTHERS[name]
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).bfloat16()
    ref = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    flop = 2 * m * n * k
    t = timed(lambda: torch.mm(x, w.t(), out=ref))
    print(f"{m:>6}  {name + ' cuBLASLt':<40}{t * 1e6:>9.1f}{flop / t / 1e12:>9.1f}", flush=True)
    for cfg in cfgs:
        out = torch.empty_like(ref)
        label = f"{name} triton plain {':'.join(map(str, cfg))}"
        try:
            t = timed(lambda: launch(x, w, out, cfg, False, num_sms))
        except Exception as e:  # a configuration the compiler or the GPU refuses
            print(f"{m:>6}  {label:<40}  failed: {type(e).__name__}", flush=True)
            continue
        diff = (out.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
        print(f"{m:>6}  {label:<40}{t * 1e6:>9.1f}{flop / t / 1e12:>9.1f}  {diff:>9.2e}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="1024,2048,3008,4096,8192")
    parser.add_argument("--glu", default="128:64:64:4:8:8:0,128:128:64:3:8:8:0,"
                        "128:64:64:4:8:8:1,128:128:64:3:8:8:1,64:128:64:4:4:8:0")
    parser.add_argument("--pairs", default="128:128:64:3:8:8:0,128:128:64:4:8:8:0,"
                        "128:128:64:3:8:8:1,128:64:64:4:8:8:0",
                        help="GLU over w's rows interleaved (gate j, up j), one product a tile")
    parser.add_argument("--plain", default="128:256:64:3:8:8:0,128:128:64:4:8:8:0,"
                        "128:256:64:3:8:8:1")
    parser.add_argument("--others", default="",
                        help="also time the plain Triton GEMM against cuBLASLt on these other "
                        "layer GEMMs (qkv, o, down; comma separated) at the same M")
    parser.add_argument("--check", action="store_true",
                        help="with TRITON_INTERPRET=1: small shapes in Triton's interpreter")
    args = parser.parse_args()
    glu_cfgs, pair_cfgs, plain_cfgs = configs(args.glu), configs(args.pairs), configs(args.plain)
    if INTERPRET:
        check_interpreted(glu_cfgs, pair_cfgs, plain_cfgs)
        return
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device="cuda"))
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(2 * I_FULL, K_FULL, device="cuda", generator=g) * 0.02).bfloat16()
    w_pairs = paired(w)
    print(f"{torch.cuda.get_device_name()}, {num_sms} SMs, triton {triton.__version__}")
    print(f"{'M':>6}  {'kernel':<40}{'us':>9}{'TFLOP/s':>9}  {'rel. diff':>9}")
    for m in (int(v) for v in args.m.split(",")):
        x = torch.randn(m, K_FULL, device="cuda", generator=g).bfloat16()
        flop = 2 * m * 2 * I_FULL * K_FULL
        mid = torch.empty(m, 2 * I_FULL, device="cuda", dtype=torch.bfloat16)
        base = torch.empty(m, I_FULL, device="cuda", dtype=torch.bfloat16)
        t_mm = timed(lambda: torch.mm(x, w.t(), out=mid))
        t_both = timed(lambda: cublas_then_silu_mul(x, w, mid, base))
        print(f"{m:>6}  {'cuBLASLt (torch.mm)':<40}{t_mm * 1e6:>9.1f}{flop / t_mm / 1e12:>9.1f}")
        print(f"{m:>6}  {'cuBLASLt + silu_mul_kernel':<40}{t_both * 1e6:>9.1f}"
              f"{flop / t_both / 1e12:>9.1f}", flush=True)
        scale = base.float().abs().max().item()
        for kind, cfgs in (("GLU", glu_cfgs), ("GLU pairs", pair_cfgs), ("plain", plain_cfgs)):
            glu, pairs = kind != "plain", kind == "GLU pairs"
            for cfg in cfgs:
                out = (torch.empty(m, I_FULL, device="cuda", dtype=torch.bfloat16) if glu
                       else torch.empty_like(mid))
                label = f"triton {kind} {':'.join(map(str, cfg))}"
                try:
                    t = timed(lambda: launch(x, w_pairs if pairs else w, out, cfg, glu, num_sms,
                                             pairs))
                except Exception as e:  # a configuration the compiler or the GPU refuses
                    print(f"{m:>6}  {label:<40}  failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80] if str(e) else ''}", flush=True)
                    continue
                ref = base if glu else mid
                diff = (out.float() - ref.float()).abs().max().item() / max(
                    scale if glu else ref.float().abs().max().item(), 1e-30)
                print(f"{m:>6}  {label:<40}{t * 1e6:>9.1f}{flop / t / 1e12:>9.1f}  {diff:>9.2e}",
                      flush=True)
        del x, mid, base
        torch.cuda.empty_cache()
        for name in (v for v in args.others.split(",") if v):
            other_rows(name, m, plain_cfgs, num_sms, g)


if __name__ == "__main__":
    main()
