"""Batch-1 decode speed of a Llama-3.1-8B-shaped bfloat16 engine (random weights drawn on the
GPU, kept in memory: no engine file), beside the roofline: weight bytes over the measured
device-to-device copy bandwidth. Prints a table last.

    python tests/gpu/speed_check.py [--steps 256] [--prompt 128] [--shape llama-3.1-8b]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class InMemoryEngine:
    """What kiln._core.PlanExecutor reads from an Engine, without writing the file."""

    def __init__(self, bundle, weights: dict[str, torch.Tensor]) -> None:
        self.kernels = bundle.header
        self.weights = weights
        self._blobs = bundle.blobs

    def blob(self, key: str) -> bytes:
        return self._blobs[key]


def copy_bandwidth(nbytes: int = 4 << 30, reps: int = 10) -> float:
    """Bytes read plus bytes written per second by a large device-to-device copy (median)."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times[2:])


def decode_rate(gpu, vocab: int, batch: int, prompt: int, steps: int, tpb: int, max_blocks: int):
    """Wall-clock seconds per decode step (median) for `batch` sequences after a prefill."""
    from kiln_testing import PagedSequences

    seqs = PagedSequences(tpb, max_blocks, gpu.num_blocks, seed=0)
    g = torch.Generator().manual_seed(batch)
    for _ in range(batch):
        seqs.add(torch.randint(0, vocab, (prompt,), generator=g).tolist())
    logits = gpu.forward(seqs.step([(s, prompt) for s in range(batch)]))
    times = []
    for _ in range(steps):
        for s in range(batch):
            seqs.tokens[s].append(int(logits[s].argmax()))
        step = seqs.step([(s, 1) for s in range(batch)])
        start = time.perf_counter()
        logits = gpu.forward(step)
        times.append(time.perf_counter() - start)
    assert torch.isfinite(torch.from_numpy(logits)).all(), "non-finite logits"
    return statistics.median(times[5:]), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=128)
    args = parser.parse_args()

    from kiln import _core
    from kiln.builder.kernels import compile_plan
    from kiln.builder.models import BuildConfig, ModelConfig, build_graph
    from kiln.builder.passes import run_pipeline
    from kiln.builder.random_weights import RandomCheckpoint

    major, minor = torch.cuda.get_device_capability()
    sm = major * 10 + minor
    build = BuildConfig(dtype="bfloat16", max_batch_size=8, max_seq_len=4096,
                        max_num_tokens=2048, tokens_per_block=32, targets=[sm])
    t0 = time.perf_counter()
    with RandomCheckpoint(args.shape) as ckpt:
        model = ModelConfig.from_hf(ckpt.hf_config)
        graph = run_pipeline(build_graph(model, build, ckpt), build)
        t1 = time.perf_counter()
        bundle = compile_plan(graph, build)
        t2 = time.perf_counter()
        weights = {n: graph.sources[n].load(torch.bfloat16).contiguous()
                   for n in graph.of_kind("weight")}
    t3 = time.perf_counter()
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    engine = InMemoryEngine(bundle, weights)
    blocks = 8 * build.max_blocks_per_seq + 8
    gpu = _core.PlanExecutor(engine, num_blocks=blocks)
    t4 = time.perf_counter()
    del weights, engine
    print(gpu.describe(), flush=True)

    bandwidth = copy_bandwidth()
    roofline = bandwidth / weight_bytes
    rows = []
    for batch in (1, 8):
        step_s, _ = decode_rate(gpu, model.vocab_size, batch, args.prompt, args.steps,
                                build.tokens_per_block, build.max_blocks_per_seq)
        rows.append((batch, step_s))
    choices = [c for c in gpu.gemm_choices() if c["m"] == 1]
    print("cuBLASLt choices at M=1:")
    for c in choices:
        print(f"  N={c['n']:>6} K={c['k']:>6}: {c['algorithm']}")
    print()
    print(f"{'what':<44}{'value':>16}")
    print(f"{'model':<44}{args.shape + ' bf16':>16}")
    print(f"{'weights (GB)':<44}{weight_bytes / 1e9:>16.2f}")
    print(f"{'plan + compile_plan (s)':<44}{t2 - t0:>16.1f}")
    print(f"{'random weights drawn (s)':<44}{t3 - t2:>16.1f}")
    print(f"{'PlanExecutor load (s)':<44}{t4 - t3:>16.1f}")
    print(f"{'d2d copy bandwidth, read+write (TB/s)':<44}{bandwidth / 1e12:>16.2f}")
    print(f"{'roofline batch-1 decode (tok/s)':<44}{roofline:>16.1f}")
    for batch, step_s in rows:
        label = f"decode batch {batch}, ctx {args.prompt}+{args.steps}"
        print(f"{label + ' (ms/step)':<44}{step_s * 1e3:>16.2f}")
        print(f"{label + ' (tok/s)':<44}{batch / step_s:>16.1f}")
    print(f"{'batch-1 decode / roofline':<44}{(1 / rows[0][1]) / roofline:>16.1%}")


if __name__ == "__main__":
    main()
