"""Would a prefetch kernel on a side stream, forked after the qkv GEMM, make the o GEMM faster?
Per layer: qkv GEMV (fresh weight), an idle ~6 us 'attention' (48 small programs spinning), the o
GEMV (fresh weight), then gate/up + down GEMVs (fresh weights, evict L2). One CUDA graph of 32
layers; variant: a prefetch kernel for the o weight on a side stream forked after qkv."""
import torch, triton, triton.language as tl, sys

@triton.jit
def spin(out_ptr, cycles):
    start = tl.extra.cuda.globaltimer()
    t = start
    while t - start < cycles:
        t = tl.extra.cuda.globaltimer()
    tl.store(out_ptr + tl.program_id(0), (t - start).to(tl.float32))

@triton.jit
def prefetch(w_ptr, lines_per_prog, total, LANES: tl.constexpr):
    base = w_ptr.to(tl.pointer_type(tl.uint8))
    lane = tl.arange(0, LANES)
    first = tl.program_id(0).to(tl.int64) * lines_per_prog
    for i in range(0, lines_per_prog, LANES):
        line = tl.minimum(first + i + lane, total - 1)
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [base + line * 128],
                                  dtype=tl.int32, is_pure=False, pack=1)

dt = torch.float8_e4m3fn if "fp8" in sys.argv else torch.bfloat16
L, H, I = 32, 4096, 14336
g = torch.Generator(device="cuda").manual_seed(0)
def w(n, k):
    return (torch.randn((n, k), generator=g, device="cuda") * 0.02).to(torch.bfloat16)
layers = [dict(qkv=w(6144, H), o=w(H, H), gu=w(2 * I, H), d=w(H, I)) for _ in range(L)]
x = torch.randn((1, H), generator=g, device="cuda").to(torch.bfloat16)
xi = torch.randn((1, I), generator=g, device="cuda").to(torch.bfloat16)
sink = torch.empty(256, device="cuda")
side = torch.cuda.Stream()
NPROG = int(sys.argv[sys.argv.index("--progs") + 1]) if "--progs" in sys.argv else 16

def step(pf: bool, attn_ns: int):
    main = torch.cuda.current_stream()
    for lw in layers:
        y = x @ lw["qkv"].T
        if pf:
            ev = torch.cuda.Event()
            ev.record(main)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                lines = lw["o"].numel() * lw["o"].element_size() // 128
                prefetch[(NPROG,)](lw["o"], -(-lines // NPROG), lines, LANES=128, num_warps=4)
        spin[(48,)](sink, attn_ns)
        y = x @ lw["o"].T
        y = x @ lw["gu"].T
        y = xi @ lw["d"].T
    if pf:
        main.wait_stream(side)

def timed(pf, attn_ns, reps=20):
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(pf, attn_ns)  # warm
    torch.cuda.synchronize()
    with torch.cuda.graph(gr):
        step(pf, attn_ns)
    for _ in range(3):
        gr.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        gr.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps

for attn_ns in (0, 6000, 9000):
    for pf in (False, True, False, True):
        print(f"attn {attn_ns/1000:.0f} us  prefetch {pf!s:5}  progs {NPROG}  {timed(pf, attn_ns)*1000:8.1f} us/step", flush=True)
