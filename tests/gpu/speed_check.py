"""Batch-1 decode speed of a Llama-3.1-8B-shaped bfloat16 engine (random weights drawn on the
GPU, kept in memory: no engine file), or of an engine built by engine-build (`--engine DIR`, a
quantized one too), beside the roofline: the bytes a decode step reads over the measured
device-to-device copy bandwidth. Prints a table last.

    python tests/gpu/speed_check.py [--steps 256] [--prompt 128] [--shape llama-3.1-8b]
                                    [--engine DIR] [--profile] [--batches 1,8,64]
                                    [--profile-batches 1,8] [--profile-mixed P:L:D:C,...]

Batches past 64 (e.g. --batches 1,8,64,256 --profile-batches 256, a throughput run's decode
step) size the in-memory engine to the largest; an engine from --engine must have been built
for them. --profile-mixed breaks down a step that carries prompts and decodes together, as a
throughput run's prompt steps do: P prompts of L tokens beside D sequences decoding at C tokens
of context (e.g. 50:128:1792:192, a 128/128 run's step of 8,192 tokens; 3:2048:416:2112, a
2048/128 run's).
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


def decode_rate(gpu, vocab: int, batch: int, prompt: int, steps: int, tpb: int, max_blocks: int,
                graphs: bool, max_tokens: int = 2048):
    """Wall-clock seconds per decode step (median) for `batch` sequences after a prefill, each
    step as the executor runs it: greedy picks on the GPU, no logits copied back."""
    from kiln_testing import PagedSequences

    gpu.cuda_graphs = graphs
    seqs = PagedSequences(tpb, max_blocks, gpu.num_blocks, seed=0)
    g = torch.Generator().manual_seed(batch)
    for _ in range(batch):
        seqs.add(torch.randint(0, vocab, (prompt,), generator=g).tolist())
    picks = prefill(gpu, seqs, [(s, prompt) for s in range(batch)], max_tokens)
    times = []
    for _ in range(steps):
        for s in range(batch):
            assert picks[s] >= 0, "non-finite logits"
            seqs.tokens[s].append(int(picks[s]))
        step = seqs.step([(s, 1) for s in range(batch)])
        start = time.perf_counter()
        picks = gpu.run_step(step, [])["tokens"]
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:]), times


def prefill_time(gpu, vocab: int, prompt: int, tpb: int, max_blocks: int, reps: int = 5) -> float:
    """Seconds (median) from a batch-1 prompt of `prompt` tokens to its first token."""
    from kiln_testing import PagedSequences

    times = []
    for rep in range(reps + 1):
        seqs = PagedSequences(tpb, max_blocks, gpu.num_blocks, seed=rep)
        g = torch.Generator().manual_seed(rep)
        seqs.add(torch.randint(0, vocab, (prompt,), generator=g).tolist())
        step = seqs.step([(0, prompt)])
        start = time.perf_counter()
        gpu.run_step(step, [])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def profile_decode(gpu, vocab: int, batch: int, prompt: int, tpb: int, max_blocks: int,
                   steps: int = 20, graphs: bool = True,
                   max_tokens: int = 2048) -> list[tuple[str, float, int]]:
    """Device time per decode step of `batch` sequences of each kernel (by name, CUPTI through
    torch's profiler): [(name, microseconds per step, launches per step)], largest first, and
    the total under the name "all kernels". Kernels launch serially here: launched
    programmatically, a kernel's time would include its wait for the one before."""
    from kiln_testing import PagedSequences

    gpu.cuda_graphs = graphs
    gpu.programmatic_launch = False
    seqs = PagedSequences(tpb, max_blocks, gpu.num_blocks, seed=1)
    g = torch.Generator().manual_seed(5)
    for _ in range(batch):
        seqs.add(torch.randint(0, vocab, (prompt,), generator=g).tolist())
    picks = prefill(gpu, seqs, [(s, prompt) for s in range(batch)], max_tokens)

    def step() -> list[int]:
        for s in range(batch):
            seqs.tokens[s].append(int(picks[s]))
        return gpu.run_step(seqs.step([(s, 1) for s in range(batch)]), [])["tokens"].tolist()

    for _ in range(3):  # warm: graphs captured, GEMM choices made
        picks = step()

    def timed() -> None:
        nonlocal picks
        picks = step()

    try:
        return kernel_times(timed, steps)
    finally:
        gpu.programmatic_launch = True


def kernel_times(run, steps: int) -> list[tuple[str, float, int]]:
    """Device time of each kernel (by name, CUPTI through torch's profiler) over `steps` calls
    of `run`: [(name, microseconds per call, launches per call)], largest first, after the
    total under the name "all kernels"."""
    from kiln.runtime.bench.step_profile import TorchTrace, by_name

    trace = TorchTrace()
    trace.start()
    for _ in range(steps):
        run()
    trace.stop()
    kernels = [e for e in trace.events() if "memcpy" not in e.name.lower()]
    rows = [(name, us / steps, n // steps) for name, us, n in by_name(kernels)]
    return [("all kernels", sum(r[1] for r in rows), sum(r[2] for r in rows))] + rows


def prefill(gpu, seqs, rows: list[tuple[int, int]], max_tokens: int) -> list[int]:
    """Computes `rows` ((sequence, tokens) each) in steps of at most `max_tokens` tokens, a
    sequence longer than that in chunks; returns each row's greedy pick after its last token."""
    picks: dict[int, int] = {}
    chunk: list[tuple[int, int]] = []

    def run() -> None:
        tokens = gpu.run_step(seqs.step(chunk), [])["tokens"]
        for (sid, _), token in zip(chunk, tokens.tolist()):
            picks[sid] = token  # a later chunk of the sequence overwrites an earlier one's

    room = max_tokens
    for sid, n in rows:
        while n > 0:
            take = min(n, room)
            chunk.append((sid, take))
            n -= take
            room -= take
            if room == 0:
                run()
                chunk, room = [], max_tokens
    if chunk:
        run()
    return [picks[sid] for sid, _ in rows]


def mixed_spec(text: str) -> tuple[int, int, int, int]:
    """PROMPTS:PROMPT_LEN:DECODES:CONTEXT of --profile-mixed."""
    try:
        values = tuple(int(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or values[1] < 1 or values[3] < 1 or \
            values[0] + values[2] < 1:
        raise argparse.ArgumentTypeError(
            f"a mixed step is PROMPTS:PROMPT_LEN:DECODES:CONTEXT (e.g. 50:128:1792:192), got {text!r}")
    return values  # type: ignore[return-value]


def _mixed_list(text: str) -> list[tuple[int, int, int, int]]:
    return [mixed_spec(v) for v in text.split(",")]


def mixed_blocks(spec: tuple[int, int, int, int], tpb: int) -> int:
    """KV blocks the sequences of a mixed step take."""
    prompts, length, decodes, context = spec
    return prompts * -(-length // tpb) + decodes * -(-(context + 1) // tpb)


def profile_mixed(gpu, vocab: int, spec: tuple[int, int, int, int], tpb: int, max_blocks: int,
                  max_tokens: int, steps: int = 10) -> list[tuple[str, float, int]]:
    """Device time per step of each kernel, as profile_decode, for one step that decodes a
    token of `decodes` sequences of `context` tokens (computed beforehand) and computes
    `prompts` prompts of `length` tokens; the same step, run again, rewrites the same KV."""
    from kiln_testing import PagedSequences

    prompts, length, decodes, context = spec
    gpu.programmatic_launch = False
    seqs = PagedSequences(tpb, max_blocks, gpu.num_blocks, seed=2)
    g = torch.Generator().manual_seed(7)
    for _ in range(decodes):
        seqs.add(torch.randint(0, vocab, (context + 1,), generator=g).tolist())
    for _ in range(prompts):
        seqs.add(torch.randint(0, vocab, (length,), generator=g).tolist())
    prefill(gpu, seqs, [(s, context) for s in range(decodes)], max_tokens)
    step = seqs.step([(s, 1) for s in range(decodes)] +
                     [(decodes + p, length) for p in range(prompts)])
    for _ in range(2):  # warm: GEMM choices made
        gpu.run_step(step, [])
    try:
        return kernel_times(lambda: gpu.run_step(step, []), steps)
    finally:
        gpu.programmatic_launch = True


def print_profile(title: str, profile) -> None:
    """Prints `profile()`'s kernel times under `title`; a failed profile is reported, so the
    speed table after it still prints."""
    print(f"{title}, by kernel:")
    try:
        for name, us, launches in profile():
            print(f"  {us:9.1f} us  {launches:4d}x  {name[:90]}")
    except Exception as e:
        print(f"  the profile failed: {type(e).__name__}: {e}")


def _batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of batch sizes (e.g. 1,8,64), got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes are positive integers, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--layers", type=int, default=None,
                        help="the in-memory engine's first N layers of --shape only (a large "
                             "model's layers, e.g. --shape qwen3-30b-a3b --layers 8)")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--engine", help="an engine directory (engine-build's --output) to time "
                        "instead of the in-memory bf16 one")
    parser.add_argument("--profile", action="store_true",
                        help="also print each kernel's device time per decode step (--profile-batches)")
    parser.add_argument("--batches", default="1,8,64", type=_batch_list,
                        help="decode batch sizes to time (comma list)")
    parser.add_argument("--profile-batches", default="1,8", type=_batch_list,
                        help="batch sizes --profile breaks down by kernel (comma list)")
    parser.add_argument("--profile-mixed", default=[], type=_mixed_list,
                        help="steps of prompts and decodes together to break down by kernel "
                             "(PROMPTS:PROMPT_LEN:DECODES:CONTEXT, comma list)")
    parser.add_argument("--fp8-fast-accumulation", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="FP8 GEMMs through cuBLASLt accumulate without promotion to float32, "
                             "as the runtime's default (--no-fp8-fast-accumulation promotes)")
    args = parser.parse_args()

    from kiln import _core
    from kiln.builder.kernels import compile_plan
    from kiln.builder.models import BuildConfig, ModelConfig, build_graph
    from kiln.builder.passes import run_pipeline
    from kiln.builder.ir import torch_dtype
    from kiln.builder.random_weights import RandomCheckpoint
    from kiln.runtime.bench.roofline import graph_decode_bytes

    largest = max(args.batches + (args.profile_batches if args.profile else []))
    # A mixed step's rows and tokens: P + D and P x L + D.
    rows_needed = max([largest] + [p + d for p, _, d, _ in args.profile_mixed])
    tokens_needed = max([largest] + [p * n + d for p, n, d, _ in args.profile_mixed])
    t0 = time.perf_counter()
    if args.engine:
        from kiln.builder.engine import load_engine
        from kiln.runtime.bench.roofline import decode_bytes_per_token

        engine = load_engine(args.engine, verify=False)
        model, build = engine.config.model, engine.config.build
        label = Path(args.engine).name
        read_bytes = decode_bytes_per_token(engine)
        t3 = time.perf_counter()
    else:
        major, minor = torch.cuda.get_device_capability()
        build = BuildConfig(dtype="bfloat16", max_batch_size=max(64, rows_needed), max_seq_len=4096,
                            max_num_tokens=max(2048, tokens_needed), tokens_per_block=32,
                            targets=[major * 10 + minor])
        with RandomCheckpoint(args.shape, num_layers=args.layers) as ckpt:
            model = ModelConfig.from_hf(ckpt.hf_config)
            graph = run_pipeline(build_graph(model, build, ckpt), build)
            bundle = compile_plan(graph, build)
            t2 = time.perf_counter()
            weights = {n: graph.sources[n].load(torch_dtype(graph.values[n].dtype)).contiguous()
                       for n in graph.of_kind("weight")}
        t3 = time.perf_counter()
        # Every weight is read once a step (the embedding table too: a bound on the safe side),
        # of a mixture of experts' experts the routed ones only.
        read_bytes = graph_decode_bytes(graph, table_row_only=False)
        engine = InMemoryEngine(bundle, weights)
        label = args.shape + (f" {args.layers}L" if args.layers else "") + " bf16"
    if rows_needed > build.max_batch_size:
        sys.exit(f"the engine takes at most {build.max_batch_size} sequences; drop the larger "
                 "batches or build one for them")
    if tokens_needed > build.max_num_tokens:
        sys.exit(f"the engine takes at most {build.max_num_tokens} tokens a step; make the mixed "
                 "steps smaller or build one for them")
    for prompts, length, decodes, context in args.profile_mixed:
        if max(length, context + 1) > build.max_seq_len:
            sys.exit(f"a mixed step's sequences ({length} and {context + 1} tokens) must fit the "
                     f"engine's max seq len {build.max_seq_len}")
    blocks = max([max(64, largest) * -(-(args.prompt + args.steps) // build.tokens_per_block)]
                 + [mixed_blocks(spec, build.tokens_per_block) for spec in args.profile_mixed]
                 ) + build.max_blocks_per_seq
    gpu = _core.PlanExecutor(engine, num_blocks=blocks)
    gpu.fp8_fast_accumulation = args.fp8_fast_accumulation
    if build.quant == "fp8":
        label += ", FP8 fast accumulation" if args.fp8_fast_accumulation else ", FP8 promoted accumulation"
    t4 = time.perf_counter()
    del engine
    if not args.engine:
        del weights
    print(gpu.describe(), flush=True)

    bandwidth = copy_bandwidth()
    roofline = bandwidth / read_bytes
    rows = []
    # "serial": every kernel launched after the one before has finished (no programmatic
    # dependent launch), for the lever's before and after.
    modes = [("eager", False, True), ("graphs", True, True), ("graphs, serial", True, False)]
    for batch in args.batches:
        for mode, graphs, pdl in modes:
            gpu.programmatic_launch = pdl
            step_s, _ = decode_rate(gpu, model.vocab_size, batch, args.prompt, args.steps,
                                    build.tokens_per_block, build.max_blocks_per_seq, graphs,
                                    build.max_num_tokens)
            rows.append((batch, mode, step_s))
    gpu.programmatic_launch = True
    # A 2,048-token prompt, where the engine holds one (an engine sized for 128/128 does not).
    fits = min(build.max_seq_len, build.max_num_tokens) >= 2048
    ttft = prefill_time(gpu, model.vocab_size, 2048, build.tokens_per_block,
                        build.max_blocks_per_seq) if fits else None
    for batch in args.profile_batches if args.profile else ():
        print_profile(f"device time per batch-{batch} decode step (graphs, serial launch)",
                      lambda: profile_decode(gpu, model.vocab_size, batch, args.prompt,
                                             build.tokens_per_block, build.max_blocks_per_seq,
                                             max_tokens=build.max_num_tokens))
    for spec in args.profile_mixed:
        prompts, length, decodes, context = spec
        print_profile(f"device time per step of {prompts} prompts of {length} tokens and "
                      f"{decodes} decodes at {context} tokens of context (serial launch)",
                      lambda: profile_mixed(gpu, model.vocab_size, spec, build.tokens_per_block,
                                            build.max_blocks_per_seq, build.max_num_tokens))
    for m in dict.fromkeys(args.batches + [p * n + d for p, n, d, _ in args.profile_mixed]):
        print(f"cuBLASLt algorithms at M={m}, then what each GEMM shape runs (chosen by timing):")
        for c in gpu.gemm_choices():
            if c["m"] == m:
                print(f"  N={c['n']:>6} K={c['k']:>6}: {c['algorithm']}")
    print(f"CUDA graphs: {gpu.graph_stats()}")
    print()
    print(f"{'what':<48}{'value':>14}")
    print(f"{'model':<48}{label:>14}")
    print(f"{'bytes read per decode step (GB)':<48}{read_bytes / 1e9:>14.2f}")
    if not args.engine:
        print(f"{'plan + compile_plan (s)':<48}{t2 - t0:>14.1f}")
        print(f"{'random weights drawn (s)':<48}{t3 - t2:>14.1f}")
    print(f"{'PlanExecutor load (s)':<48}{t4 - t3:>14.1f}")
    print(f"{'d2d copy bandwidth, read+write (TB/s)':<48}{bandwidth / 1e12:>14.2f}")
    print(f"{'roofline batch-1 decode (tok/s)':<48}{roofline:>14.1f}")
    for batch, mode, step_s in rows:
        label = f"decode b{batch} ctx {args.prompt}+{args.steps} {mode}"
        print(f"{label + ' (ms/step)':<48}{step_s * 1e3:>14.2f}")
        print(f"{label + ' (tok/s)':<48}{batch / step_s:>14.1f}")
    if 1 in args.batches:
        best1 = min(step_s for batch, mode, step_s in rows if batch == 1 and "serial" not in mode)
        print(f"{'batch-1 decode / roofline':<48}{(1 / best1) / roofline:>14.1%}")
    if ttft is None:
        print(f"{'time to first token, 2048-token prompt':<48}{'not measured':>14} (the engine's "
              f"max seq {build.max_seq_len}, max tokens {build.max_num_tokens})")
    else:
        print(f"{'time to first token, 2048-token prompt (ms)':<48}{ttft * 1e3:>14.1f}")


if __name__ == "__main__":
    main()
