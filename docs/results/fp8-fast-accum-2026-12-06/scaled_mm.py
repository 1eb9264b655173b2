"""cuBLASLt's FP8 GEMM with and without fast accumulation at the Llama-3.1-8B shapes, through
torch._scaled_mm (use_fast_accum sets CUBLASLT_MATMUL_DESC_FAST_ACCUM): each one's error against
the float64 product of the same e4m3 operands (float32 out, so the error is the accumulation's),
beside the error the e4m3 quantization of the operands itself makes (the bfloat16 operands'
float64 product against the e4m3 one), and each one's time with bfloat16 out, as the engine
runs it (CUDA events, the best of 5 runs of 20, each run after a 256 MiB write that evicts
L2)."""
import torch

SHAPES = [(6144, 4096, "qkv"), (4096, 4096, "o"), (28672, 4096, "gate_up"), (4096, 14336, "down")]
ROWS = [167, 2048, 8192]
E4M3_MAX = 448.0


def quantize(x: torch.Tensor):
    scale = x.abs().amax().float() / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def timed(fn, reps=20, runs=5) -> float:
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(runs):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / reps)
    return best


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def main() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(f"{'GEMM':<9}{'M':>6}{'N':>7}{'K':>7}{'e4m3 err':>10}{'precise err':>12}{'fast err':>10}"
          f"{'precise us':>12}{'fast us':>9}{'TFLOP/s p':>11}{'fast':>7}")
    for n, k, name in SHAPES:
        w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * 0.02
        wq, sw = quantize(w)
        for m in ROWS:
            # Activations as a norm gives them: unit scale, a few channels much larger.
            a = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
            a[:, :: max(1, k // 8)] *= 20
            aq, sa = quantize(a)
            exact = (aq.double() * sa.double()) @ (wq.double() * sw.double()).T
            plain = a.double() @ w.double().T
            outs, times = {}, {}
            for fast in (False, True):
                def run(out_dtype=torch.bfloat16):
                    return torch._scaled_mm(aq, wq.t(), scale_a=sa, scale_b=sw, out_dtype=out_dtype,
                                            use_fast_accum=fast)
                outs[fast] = run(torch.float32)  # the error is the accumulation's, not bf16's
                times[fast] = timed(run)  # the time as the engine runs it, bfloat16 out
            flop = 2 * m * n * k
            print(f"{name:<9}{m:>6}{n:>7}{k:>7}{rel(exact, plain):>10.2e}{rel(outs[False], exact):>12.2e}"
                  f"{rel(outs[True], exact):>10.2e}{times[False]:>12.1f}{times[True]:>9.1f}"
                  f"{flop / times[False] / 1e6:>11.0f}{flop / times[True] / 1e6:>7.0f}")


if __name__ == "__main__":
    main()
