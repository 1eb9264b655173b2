"""Whether a one-row FP8 GEMM gains from its weight asked of L2 by the kernel before it, in bulk
(`cp.async.bulk.prefetch.L2`: one instruction a chunk, served by the copy engine, the program
free to go on), measured before it is built. A model of a batch-1 FP8 layer's latency-bound
stretch: `stand_in_kernel` (P programs of 4 warps that only wait, NS nanoseconds by the global
timer: the decode attention and its reduce, ~8 us on an H100, or a norm, ~2 us) then Kiln's
`gemv_kernel` (FP8, the engine's configuration for the shape) on that layer's weight; 32 layers
of fresh e4m3 weights (larger than L2 together) in one CUDA graph, us a layer:

- plain: the stand-in, then the GEMM;
- ahead: the same, the stand-in's programs first asking L2 for the GEMM's whole weight (or the
  first BYTES of it), split among their threads;
- the GEMM alone and the stand-in alone, for scale.

    bash docs/results/residual-prefetch-2026-12-07/run.sh   (on a GPU; nothing built)
"""
import torch
import triton
import triton.language as tl

from kiln.builder.kernels import gemm

LAYERS = 32

_NOW = tl.constexpr("mov.u64 $0, %globaltimer;")
# A chunk of at most 2^31 bytes, 16-byte aligned, a multiple of 16; none where size <= 0.
_PREFETCH = tl.constexpr("""{
.reg .pred p;
setp.gt.s32 p, $2, 0;
@p cp.async.bulk.prefetch.L2.global [$1], $2;
mov.u32 $0, 0;
}""")


@triton.jit
def _now(like):
    return tl.inline_asm_elementwise(_NOW, "=l,r", [like], dtype=tl.int64, is_pure=False,
                                     pack=1)


@triton.jit
def stand_in_kernel(flag_ptr, w_ptr, NBYTES, NS, PREFETCH: tl.constexpr):
    t = tl.arange(0, 128)
    if PREFETCH:
        threads = tl.num_programs(0) * 128
        chunk = ((NBYTES + threads - 1) // threads + 15) // 16 * 16
        start = (tl.program_id(0) * 128 + t).to(tl.int64) * chunk
        size = tl.minimum(chunk, NBYTES - start).to(tl.int32)
        r = tl.inline_asm_elementwise(_PREFETCH, "=r,l,r", [w_ptr + start, size],
                                      dtype=tl.int32, is_pure=False, pack=1)
        if tl.sum(r, axis=0) == 12345:  # never: keeps the requests
            tl.store(flag_ptr, 1)
    t0 = tl.max(_now(t), axis=0)
    now = t0
    while now - t0 < NS:
        now = tl.max(_now(t), axis=0)
    if now == 0:  # never
        tl.store(flag_ptr, 2)


def graph_of(fn) -> torch.cuda.CUDAGraph:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def timed(g: torch.cuda.CUDAGraph, passes: int = 21) -> float:
    times = []
    for _ in range(passes):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / LAYERS)
    return sorted(times)[passes // 2]


def main() -> None:
    print(torch.cuda.get_device_name())
    gen = torch.Generator(device="cuda").manual_seed(0)
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    a_scale = torch.tensor([0.02], device="cuda")
    w_scale = torch.tensor([0.001], device="cuda")
    # (shape name, N, K, the engine's one-row configuration index on the H100, stand-in ns,
    # stand-in programs)
    cases = (("o", 4096, 4096, 0, 8000, 48), ("o", 4096, 4096, 0, 6000, 48),
             ("o", 4096, 4096, 0, 4000, 48), ("qkv", 6144, 4096, 1, 2200, 132),
             ("gate_up", 28672, 4096, 2, 2200, 132), ("down", 4096, 14336, 0, 2200, 132))
    weights = {}
    for name, n, k, config, ns, programs in cases:
        if name not in weights:
            weights[name] = [(torch.randn(n, k, device="cuda", generator=gen) * 8)
                             .to(torch.float8_e4m3fn) for _ in range(LAYERS)]
        ws = weights[name]
        x = (torch.randn(1, k, device="cuda", generator=gen) * 8).to(torch.float8_e4m3fn)
        out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
        nbytes = n * k

        def layer(w, prefetch: bool, stand_in: bool = True, gemv: bool = True, limit=nbytes):
            if stand_in:
                stand_in_kernel[(programs,)](flag, w, limit, ns, PREFETCH=prefetch, num_warps=4)
            if gemv:
                gemm.linear_gemv(x, w, config=config, out=out, scales=(a_scale, w_scale),
                                 dtype=torch.bfloat16)

        variants = {
            "plain": lambda: [layer(w, False) for w in ws],
            "ahead": lambda: [layer(w, True) for w in ws],
            "ahead 12 MB": lambda: [layer(w, True, limit=min(nbytes, 12 << 20)) for w in ws],
            "GEMM alone": lambda: [layer(w, False, stand_in=False) for w in ws],
            "stand-in alone": lambda: [layer(w, False, gemv=False) for w in ws],
            "stand-in asking": lambda: [layer(w, True, gemv=False) for w in ws],
        }
        graphs = {v: graph_of(fn) for v, fn in variants.items()}
        for g in graphs.values():
            timed(g, 3)
        rounds = {v: [] for v in graphs}
        for _ in range(3):
            for v, g in graphs.items():
                rounds[v].append(timed(g))
        us = {v: sorted(t)[1] for v, t in rounds.items()}
        floor = nbytes / 3.0e12 * 1e6
        print(f"{name:7s} {nbytes / 1e6:6.1f} MB (at 3.0 TB/s {floor:5.1f} us), stand-in {ns / 1e3:.1f} us"
              f" on {programs}: " + "  ".join(f"{v} {t:.1f}" for v, t in us.items())
              + f"  -> ahead saves {us['plain'] - us['ahead']:.1f} us a layer")


if __name__ == "__main__":
    main()
