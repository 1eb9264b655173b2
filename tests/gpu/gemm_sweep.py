"""Bandwidth of the decode GEMMs of a Llama-3.1-8B-shaped layer at M = 1 (or --m), per kernel
and configuration: cuBLASLt (torch), the small-M Triton kernel's configurations
(kiln.builder.kernels.gemm), and for FP8 weights torch._scaled_mm beside the SCALED kernel.

Each figure is a CUDA graph of back-to-back launches, each on another copy of the weight (the
copies together exceed the L2 cache), as a decode step runs them; bytes = the weight's. With
--m above 16 the small-M kernel takes all the rows in one program (BLOCK_M the next power of
two), each weight row read once.

    python tests/gpu/gemm_sweep.py [--configs 16:256:4:4:0,64:128:4:4:1] [--m 1]
                                   [--int4 16:64:128:4:3,...] [--gemv 8:128:4:1,...]
                                   [--mma 64:32:1:3:8[:S][:after],...] [--skip-16bit]
                                   [--one-row 8:512:4,...] [--one-row-fp8 8:1024:4,...]
"""
from __future__ import annotations

import argparse

import torch
import triton

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def graph_time(launch, copies: int, reps: int = 64) -> float:
    """Seconds per launch: `reps` launches in one CUDA graph, launch(i) using copy i % copies."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for i in range(copies):  # compile and warm outside the capture
            launch(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(reps):
            launch(i % copies)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=None,
                        help="the small-M kernel's configurations BLOCK_N:BLOCK_K:warps:stages:SWAP "
                        "(SWAP 0 or 1) for 16-bit weights (default: the shipped SMALL_CONFIGS)")
    parser.add_argument("--configs-fp8", default=None,
                        help="the same for e4m3 weights and x (default: SMALL_CONFIGS_FP8)")
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--int4", default="",
                        help="also time the W4A16 small-M kernel with these WO_SMALL configs "
                        "(BLOCK_M:BLOCK_N:BLOCK_K:warps:stages, comma separated)")
    parser.add_argument("--gemv", default="",
                        help="also time the W4A16 GEMV (M <= 4) with these WO_GEMV configs "
                        "(BLOCK_N:BLOCK_W:warps:stages, comma separated)")
    parser.add_argument("--mma", default="",
                        help="also time the int4 tensor-core kernel with these WO_MMA configs "
                        "(BLOCK_N:BLOCK_H:warps:stages:BLOCK_M[:splits][:after], comma "
                        "separated; after: the scales applied after the MMAs)")
    parser.add_argument("--one-row", default=None,
                        help="the one-row kernel's (gemv_kernel) configurations BLOCK_N:BLOCK_K:"
                        "warps for 16-bit weights (default: the shipped GEMV_CONFIGS)")
    parser.add_argument("--one-row-fp8", default=None,
                        help="the same for e4m3 weights and x (default: GEMV_CONFIGS_FP8)")
    parser.add_argument("--skip-16bit", action="store_true",
                        help="only the --int4/--gemv/--mma rows")
    args = parser.parse_args()

    from kiln.builder.kernels import gemm

    def configs(text):
        return [tuple(int(v) for v in c.split(":")) for c in text.split(",") if c]

    small = configs(args.configs) if args.configs is not None else gemm.SMALL_CONFIGS
    small_fp8 = (configs(args.configs_fp8) if args.configs_fp8 is not None
                 else gemm.SMALL_CONFIGS_FP8)
    one_row = configs(args.one_row) if args.one_row is not None else gemm.GEMV_CONFIGS
    one_row_fp8 = (configs(args.one_row_fp8) if args.one_row_fp8 is not None
                   else gemm.GEMV_CONFIGS_FP8)

    fp8 = torch.cuda.get_device_capability() >= (8, 9)
    wide = {"block_m": triton.next_power_of_2(args.m)} if args.m > gemm.SMALL_M else {}
    print(f"{'shape':<9}{'N':>7}{'K':>7}  {'kernel':<28}{'us':>8}{'TB/s':>7}")
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(args.m, k, device="cuda", generator=g).bfloat16()
        if args.skip_16bit:
            int4_rows(name, n, k, x, args.int4, args.gemv, args.mma)
            continue
        copies = max(2, -(-(256 << 20) // (n * k * 2)))
        ws = [torch.randn(n, k, device="cuda", generator=g).mul_(0.02).bfloat16()
              for _ in range(copies)]
        out = torch.empty(args.m, n, device="cuda", dtype=torch.bfloat16)
        rows = [("cuBLASLt (torch.mm)", lambda i: torch.mm(x, ws[i].t(), out=out))]
        gemm.SMALL_CONFIGS, gemm.GEMV_CONFIGS = tuple(small), tuple(one_row)
        rows += kernel_rows("small-M", gemm.SMALL_CONFIGS, gemm.linear_small_m, x, ws, out,
                            **wide)
        if args.m == 1:
            rows += kernel_rows("one-row", gemm.GEMV_CONFIGS, gemm.linear_gemv, x, ws, out)
        for label, launch in rows:
            t = graph_time(launch, copies)
            print(f"{name:<9}{n:>7}{k:>7}  {label:<28}{t * 1e6:>8.1f}{n * k * 2 / t / 1e12:>7.2f}",
                  flush=True)
        if not fp8:
            continue
        wq = [w.float().clamp(-448, 448).to(torch.float8_e4m3fn) for w in ws]
        rows = []
        del ws
        xq = x.float().to(torch.float8_e4m3fn)
        one = torch.ones(1, device="cuda")
        copies8 = len(wq)
        x16 = torch.zeros(max(16, args.m), k, device="cuda", dtype=torch.float8_e4m3fn)
        x16[: args.m] = xq
        rows.append((f"cuBLASLt (_scaled_mm, M={len(x16)})",
                     lambda i: torch._scaled_mm(x16, wq[i].t(), one, one,
                                                out_dtype=torch.bfloat16)))
        gemm.SMALL_CONFIGS_FP8, gemm.GEMV_CONFIGS_FP8 = tuple(small_fp8), tuple(one_row_fp8)
        scaled = dict(scales=(one, one), dtype=torch.bfloat16)
        rows += kernel_rows("small-M fp8", gemm.SMALL_CONFIGS_FP8, gemm.linear_small_m, xq, wq,
                            out, **scaled, **wide)
        if args.m == 1:
            rows += kernel_rows("one-row fp8", gemm.GEMV_CONFIGS_FP8, gemm.linear_gemv, xq, wq,
                                out, **scaled)
        for label, launch in rows:
            t = graph_time(launch, copies8)
            print(f"{name:<9}{n:>7}{k:>7}  {label:<28}{t * 1e6:>8.1f}{n * k / t / 1e12:>7.2f}",
                  flush=True)
        del wq
        torch.cuda.empty_cache()
        if args.int4 or args.gemv or args.mma:
            int4_rows(name, n, k, x, args.int4, args.gemv, args.mma)


def kernel_rows(label: str, configs, linear, x, ws, out, **kw) -> list:
    """(label, launch(i)) rows of one Triton kernel, one a configuration: `linear` (gemm's
    linear_small_m or linear_gemv) with configuration c of `configs` on weight copy i."""
    return [(f"{label} {':'.join(map(str, cfg))}",
             lambda i, c=c: linear(x, ws[i], config=c, out=out, **kw))
            for c, cfg in enumerate(configs)]


def int4_rows(name: str, n: int, k: int, x, splitk_text: str, gemv_text: str,
              mma_text: str = "", group: int = 128) -> None:
    """linear_wo (kernels/quant_gemm.py) on a packed int4 weight with bfloat16 group scales:
    the split-K kernel for each WO_SMALL configuration BLOCK_M:BLOCK_N:BLOCK_K:warps:stages
    (S as the plan picks it), the GEMV for each BLOCK_N:BLOCK_W:warps:stages, the tensor-core
    kernel for each BLOCK_N:BLOCK_H:warps:stages:BLOCK_M (S given or as the plan picks it;
    ":after": the scales after the MMAs),
    the dequantization that precedes cuBLASLt for M > 16 (bytes: read and written) and the
    two together; bytes = the packed weight, its scales and its offsets (asymmetric groups, as
    calibration makes them)."""
    from kiln.builder.kernels import quant_gemm

    g = torch.Generator(device="cuda").manual_seed(1)
    m = x.shape[0]
    nbytes = n * k // 2 + 2 * n * (k // group) * 2
    copies = max(2, -(-(256 << 20) // nbytes))
    ws = [torch.randint(0, 256, (n, k // 2), device="cuda", generator=g, dtype=torch.int32)
          .to(torch.uint8) for _ in range(copies)]
    scales = (torch.rand(n, k // group, device="cuda", generator=g) * 0.01).bfloat16()
    offsets = (torch.randn(n, k // group, device="cuda", generator=g) * 0.01).bfloat16()
    out = torch.empty(x.shape[0], n, device="cuda", dtype=torch.bfloat16)
    rows = []
    default = quant_gemm.WO_SMALL
    for text in filter(None, splitk_text.split(",")):
        cfg = tuple(int(v) for v in text.split(":"))
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        splits = quant_gemm.splits_for(n, k, sms)

        def splitk(i, cfg=cfg):
            quant_gemm.WO_SMALL = cfg
            quant_gemm.linear_wo(x, ws[i], scales, 4, group, offsets, out=out, path="splitk")
        rows.append((f"int4 {text} S={splits}", splitk, nbytes))
    for text in filter(None, gemv_text.split(",")):
        cfg = tuple(int(v) for v in text.split(":"))
        rows.append((f"int4 gemv {text}",
                     lambda i, cfg=cfg: quant_gemm.linear_wo(x, ws[i], scales, 4, group, offsets,
                                                             out=out,
                                                             path="gemv", gemv_config=cfg),
                     nbytes))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for text in filter(None, mma_text.split(",")):
        fields = text.split(":")
        after = fields[-1] == "after"
        given = tuple(int(v) for v in fields[:len(fields) - after])
        cfg = given[:5] + (max(given[4], m), after)
        splits = given[5] if len(given) > 5 else quant_gemm.mma_splits(n, k, group, cfg, sms, m)
        space = (torch.empty(splits * m * n, device="cuda"),
                 torch.zeros(-(-m // cfg[4]) * n, device="cuda", dtype=torch.int32))
        label = ':'.join(map(str, cfg[:5])) + (" after" if after else "")
        rows.append((f"int4 mma {label} S={splits}",
                     lambda i, cfg=cfg, splits=splits, space=space: quant_gemm.linear_wo(
                         x, ws[i], scales, 4, group, offsets, out=out, path="mma",
                         mma_config=cfg, num_splits=splits, workspace=space),
                     nbytes))
    wd = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
    rows.append(("int4 dequantize (r+w)",
                 lambda i: quant_gemm.dequantize(ws[i], scales, 4, group, offsets, out=wd),
                 nbytes + n * k * 2))

    def dequant_mm(i):
        quant_gemm.dequantize(ws[i], scales, 4, group, offsets, out=wd)
        torch.mm(x, wd.t(), out=out)
    rows.append(("int4 dequantize + cuBLASLt", dequant_mm, nbytes))
    for label, launch, moved in rows:
        t = graph_time(launch, copies)
        print(f"{name:<9}{n:>7}{k:>7}  {label:<28}{t * 1e6:>8.1f}{moved / t / 1e12:>7.2f}",
              flush=True)
    quant_gemm.WO_SMALL = default


if __name__ == "__main__":
    main()
