"""Speed of the paged attention kernels (kiln.builder.kernels.attention) per launch
configuration: Llama-3.1-8B's heads (32 query, 8 KV, head_dim 128), 32 tokens a block, every
sequence's blocks scattered over the cache.

Decode (paged_decode_kernel), for a bfloat16 and an FP8 KV cache: bytes = the K and V a launch
reads (every sequence's whole context). Prefill (paged_attention_kernel, bfloat16 cache, causal
prompts): FLOP/s = 4 * heads * head_dim per (query, visible key) pair, over the launch's time.
Each figure is a launch's share of back-to-back launches timed by CUDA events (median of 3);
max err is against the default configuration. --prologue runs the decode kernel as a plan's
step does: RoPE on q, and each sequence's new k and v rotated and written into the cache (its
last context token) inside the kernel, so each program first waits on those loads and stores;
--rope-first does that work in rope_kv_kernel (the prefill's way) and times it with the decode
kernel after it.

    python tests/gpu/attention_sweep.py [--cases 256:3072:1,1:384:8] [--configs 64:4:2,...]
        [--kv bf16,fp8] [--prologue | --rope-first] [--prefill 3:2048,50:128]
        [--prefill-configs 64:64:8:2,...]
"""
from __future__ import annotations

import argparse
import statistics

import torch

NQ, NKV, HD, TPB = 32, 8, 128, 32
CASES = "256:3072:1,64:3072:1,1:384:8,1:4096:32"  # batch:context:splits
CONFIGS = "64:4:2,64:4:3,64:8:2,128:4:2,128:8:2,128:8:3,32:4:3"  # TILE:num_warps:num_stages
PREFILL = "3:2048,50:128,1:2048"  # prompts:length
# BLOCK_M:TILE:num_warps:num_stages (the first is what the plan launches)
PREFILL_CONFIGS = "64:64:4:2,64:64:8:2,64:64:4:3,128:64:8:2,128:64:8:3,128:128:8:2,128:32:4:3"


def time_launch(launch, reps: int = 20) -> float:
    """Seconds a launch takes: `reps` back-to-back launches between two events (so the host's
    launch overhead, ~tens of us a Triton launch, hides under the kernels), median of 3."""
    launch()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES)
    parser.add_argument("--configs", default=CONFIGS)
    parser.add_argument("--kv", default="bf16,fp8", help="the decode cases' cache dtypes")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--prologue", action="store_true",
                      help="decode with RoPE and the KV write inside the kernel, as a step does")
    step.add_argument("--rope-first", action="store_true",
                      help="RoPE and the KV write by rope_kv_kernel, then the decode kernel")
    parser.add_argument("--prefill", default=PREFILL)
    parser.add_argument("--prefill-configs", default=PREFILL_CONFIGS)
    args = parser.parse_args()
    if args.cases:
        decode_sweep(args)
    if args.prefill:
        prefill_sweep(args)


def occupancy(kernel) -> str:
    """A compiled kernel's registers a thread, shared bytes and programs an SM (the least of
    the register file's, shared memory's and the 64-warp limit's), as the CUDA occupancy
    calculator counts them for compute capability 9.0."""
    try:
        regs, shared, warps = kernel.n_regs, kernel.metadata.shared, kernel.metadata.num_warps
    except AttributeError:
        return ""
    regs_a_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = 65536 // (regs_a_warp * warps)
    by_shared = (233472 // (shared + 1024)) if shared else 32
    programs = min(by_regs, by_shared, 64 // warps, 32)
    return f"{regs} regs, {shared} B shared: {programs} an SM"


def scattered_tables(g, b: int, blocks_each: int):
    """Block tables [b, blocks_each] over a cache of one block more, in random order."""
    num_blocks = b * blocks_each + 1
    tables = torch.randperm(num_blocks - 1, generator=g, device="cuda")[:b * blocks_each]
    return tables.reshape(b, blocks_each).to(torch.int32), num_blocks


def prefill_sweep(args) -> None:
    from kiln.builder.kernels import attention as att

    print(f"{'prompts':>8}{'len':>6}  {'BLOCK_M:TILE:warps:stages':<27}{'us':>9}{'TFLOP/s':>9}"
          f"{'  max err':>10}")
    g = torch.Generator(device="cuda").manual_seed(1)
    for case in args.prefill.split(","):
        b, length = (int(v) for v in case.split(":"))
        tables, num_blocks = scattered_tables(g, b, -(-length // TPB))
        lens = torch.full((b,), length, dtype=torch.int32, device="cuda")
        qstart = torch.arange(b + 1, dtype=torch.int32, device="cuda") * length
        t = b * length
        q = torch.randn((t, NQ * HD), generator=g, device="cuda").to(torch.bfloat16)
        kc = torch.randn((num_blocks, NKV, TPB, HD), generator=g, device="cuda").to(torch.bfloat16)
        vc = torch.randn((num_blocks, NKV, TPB, HD), generator=g, device="cuda").to(torch.bfloat16)
        flops = 4 * NQ * HD * b * length * (length + 1) / 2
        ref = None
        for config in args.prefill_configs.split(","):
            block_m, tile, warps, stages = (int(v) for v in config.split(":"))
            cfg = dict(att.prefill_config(NQ, NKV, HD), BLOCK_M=block_m,
                       BLOCK_Q=block_m // (NQ // NKV), TILE=tile)
            out = torch.empty_like(q)

            def launch():
                att.paged_attention_kernel[(t // cfg["BLOCK_Q"] + b, NKV)](
                    out, q, kc, vc, tables, lens, qstart, b, 0, tables.stride(0), HD ** -0.5,
                    kc, vc, Q_STRIDE=q.stride(0), OUT_STRIDE=out.stride(0), NKV=NKV,
                    HEAD_DIM=HD, TPB=TPB, IEEE=False, KV_QUANT=0, **cfg, num_warps=warps,
                    num_stages=stages)
            try:
                seconds = time_launch(launch)
            except Exception as e:  # a configuration that does not fit: say so, go on
                print(f"{b:>8}{length:>6}  {config:<27} failed: {type(e).__name__}: {str(e)[:60]}")
                continue
            ref = out.float() if ref is None else ref
            err = (out.float() - ref).abs().max().item()
            print(f"{b:>8}{length:>6}  {config:<27}{seconds * 1e6:>9.1f}"
                  f"{flops / seconds / 1e12:>9.1f}{err:>10.1e}", flush=True)


def decode_sweep(args) -> None:
    from kiln.builder.kernels import attention as att
    from kiln.builder.kernels.rope import inv_freq_table, rope_kv, v_cache_stored

    print(f"{'kv':<6}{'B':>5}{'ctx':>6}{'S':>4}  {'TILE:warps:stages':<19}{'us':>9}{'TB/s':>7}"
          f"{'  max err':>10}  occupancy" + ("  (RoPE and the KV write inside)" if args.prologue else
                                  "  (rope_kv_kernel, then decode)" if args.rope_first else ""))
    g = torch.Generator(device="cuda").manual_seed(0)
    inv_freq = torch.tensor(inv_freq_table(dict(head_dim=HD, theta=500000.0)),
                            dtype=torch.float32, device="cuda")
    for case in args.cases.split(","):
        b, ctx, splits = (int(v) for v in case.split(":"))
        tables, num_blocks = scattered_tables(g, b, -(-ctx // TPB))
        lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
        qstart = torch.arange(b + 1, dtype=torch.int32, device="cuda")
        q = torch.randn((b, NQ * HD), generator=g, device="cuda").to(torch.bfloat16)
        # The step's new token of each sequence: its last context position, in its last block.
        positions = lens - 1
        slots = tables.gather(1, (positions // TPB)[:, None].long())[:, 0] * TPB + positions % TPB
        new_k, new_v = (torch.randn((b, NKV * HD), generator=g, device="cuda").to(torch.bfloat16)
                        for _ in range(2))
        new_kv = dict(k=new_k, v=new_v, positions=positions, slot_mapping=slots,
                      inv_freq=inv_freq, rope=True) if args.prologue or args.rope_first else None
        k16 = torch.randn((num_blocks, NKV, TPB, HD), generator=g, device="cuda").to(torch.bfloat16)
        v16 = torch.randn((num_blocks, NKV, TPB, HD), generator=g, device="cuda").to(torch.bfloat16)
        k_scale = torch.tensor([4.0 / 448], device="cuda")
        v_scale = torch.tensor([4.0 / 448], device="cuda")
        caches = {"bf16": (k16, v16, None, None),
                  "fp8": ((k16.float() / k_scale).clamp(-448, 448).to(torch.float8_e4m3fn),
                          v_cache_stored((v16.float() / v_scale).clamp(-448, 448)
                                         .to(torch.float8_e4m3fn)),
                          k_scale, v_scale)}
        for kv in args.kv.split(","):
            kc, vc, ks, vs = caches[kv]
            quant = att.kv_quant(kc.dtype)
            nbytes = 2 * b * ctx * NKV * HD * kc.element_size()
            ref = att.paged_attention(q, kc, vc, tables, lens, qstart, NQ, HD, HD ** -0.5,
                                      num_splits=splits, k_scale=ks, v_scale=vs,
                                      new_kv=new_kv).float()
            for config in args.configs.split(","):
                tile, warps, stages = (int(v) for v in config.split(":"))
                out = torch.empty_like(q)
                partials = torch.empty(b * NQ * splits * (HD + 2), dtype=torch.float32,
                                       device="cuda")
                shape = dict(att.decode_config(NQ, NKV, HD), Q_STRIDE=q.stride(0),
                             OUT_STRIDE=out.stride(0), NKV=NKV, HEAD_DIM=HD, TPB=TPB, IEEE=False,
                             KV_QUANT=quant, NQ=NQ, TILE=tile)
                scales = (ks, vs) if ks is not None else (kc, vc)
                if args.prologue:  # q rotated into out, where the kernel then reads it
                    q_src, prologue = out, (q, new_k, new_v, positions, slots, inv_freq)
                    shape.update(att.prologue_constexprs(q.stride(0), new_k.stride(0),
                                                         new_v.stride(0), NQ, NKV, HD, True))
                elif args.rope_first:  # q rotated into out by rope_kv_kernel
                    q_src, prologue = out, (q,) * 6
                else:
                    q_src, prologue = q, (q,) * 6  # never read

                compiled = []

                def launch():
                    if args.rope_first:
                        rope_kv(q, new_k, new_v, positions, slots, kc, vc, inv_freq, HD,
                                k_scale=ks, v_scale=vs, q_out=out)
                    compiled.append(att.paged_decode_kernel[(b, NKV, splits)](
                        out, partials, q_src, kc, vc, tables, lens, qstart, tables.stride(0),
                        splits, HD ** -0.5, *scales, *prologue, **shape, num_warps=warps,
                        num_stages=stages))
                    if splits > 1:
                        att.paged_decode_reduce_kernel[(b, NQ)](
                            out, partials, qstart, splits, OUT_STRIDE=out.stride(0), NQ=NQ,
                            HEAD_DIM=HD, DIM_PAD=HD, SPLITS_PAD=att.MAX_SPLITS, num_warps=4)
                try:
                    seconds = time_launch(launch)
                except Exception as e:  # a configuration that does not fit: say so, go on
                    print(f"{kv:<6}{b:>5}{ctx:>6}{splits:>4}  {config:<19} failed: "
                          f"{type(e).__name__}: {str(e)[:60]}")
                    continue
                err = (out.float() - ref).abs().max().item()
                print(f"{kv:<6}{b:>5}{ctx:>6}{splits:>4}  {config:<19}{seconds * 1e6:>9.1f}"
                      f"{nbytes / seconds / 1e12:>7.2f}{err:>10.1e}  {occupancy(compiled[-1])}",
                      flush=True)


if __name__ == "__main__":
    main()
