"""CUDA graphs and the greedy pick on the GPU plan executor: a decode step replayed from a graph
equals the same step run launch by launch, bit for bit, as graphs are reused with new inputs and
new ones are captured when the launch shape changes; padded batches give the unpadded tokens;
the pick equals torch's argmax and log-softmax over the same logits."""
import numpy as np
import pytest
import torch

from kiln.builder.engine import load_engine
from kiln_testing import PagedSequences

pytestmark = pytest.mark.gpu

NUM_BLOCKS = 96


def sequences(engine, lengths, seed):
    build = engine.config.build
    seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, NUM_BLOCKS, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for n in lengths:
        seqs.add(torch.randint(0, engine.config.model.vocab_size, (n,), generator=gen).tolist())
    return seqs


def advance(seqs, plan, logits):
    for row, (sid, _) in enumerate(plan):
        if seqs.computed[sid] == len(seqs.tokens[sid]):
            seqs.tokens[sid].append(int(logits[row].argmax()))


@pytest.mark.parametrize("arch,dtype", [("llama", "bfloat16"), ("llama", "float32"),
                                        ("qwen3_moe", "bfloat16"), ("qwen2_moe", "bfloat16")])
def test_graph_replay_equals_eager(core, sm, tiny_engine, arch, dtype):
    """Mixtures of experts too: their launches' grids and the 16- and 64-row paths' `when`
    follow T."""
    engine = load_engine(tiny_engine(arch, dtype, targets=(sm,), max_seq_len=256,
                                     max_num_tokens=256, tokens_per_block=16)[1])
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    # Sequence 0 grows from 110 to 150 tokens: past 128 its KV split count (a launch shape)
    # changes, and a new graph is captured.
    seqs = sequences(engine, (110, 10, 60, 33), seed=7)
    prefill = [(0, 110), (1, 10), (2, 60), (3, 33)]
    advance(seqs, prefill, gpu.forward(seqs.step(prefill)))  # a prefill never runs as a graph
    assert gpu.graph_stats() == {"captured": 0, "replays": 0, "eager_steps": 1, "capture_s": 0.0}
    shapes = [[(0, 1), (1, 1), (2, 1), (3, 1)], [(1, 1), (3, 1)], [(0, 1)]]
    replays = 0
    for i in range(60):
        plan = shapes[i % 3]
        step = seqs.step(plan)
        gpu.cuda_graphs = False
        eager = gpu.forward(step)
        gpu.cuda_graphs = True
        replayed = gpu.forward(step)  # rewrites the same KV slots with the same values
        replays += 1
        assert np.array_equal(eager, replayed), f"decode step {i}: replay differs from eager"
        advance(seqs, plan, eager)
    stats = gpu.graph_stats()
    assert stats["replays"] == replays
    assert 3 <= stats["captured"] < replays  # reused with new inputs, new ones per shape
    assert 0.0 < stats["capture_s"] < 60.0


def test_padded_batch_gives_the_unpadded_tokens(core, sm, tiny_engine):
    engine = load_engine(tiny_engine("qwen3", "float32", targets=(sm,))[1])
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    seqs = sequences(engine, (9, 17, 5), seed=3)
    plan = [(0, 9), (1, 17), (2, 5)]
    advance(seqs, plan, gpu.forward(seqs.step(plan)))
    for i in range(8):
        plan = [(0, 1), (1, 1), (2, 1)]  # 3 rows run as a graph of 4
        step = seqs.step(plan)
        gpu.cuda_graphs = False
        eager = gpu.forward(step)
        gpu.cuda_graphs = True
        padded = gpu.forward(step)
        assert padded.shape == eager.shape
        assert (padded.argmax(-1) == eager.argmax(-1)).all()
        err = np.linalg.norm(padded - eager) / np.linalg.norm(eager)
        assert err < 1e-5, f"decode step {i}: padded differs by {err:.2e}"
        advance(seqs, plan, eager)
    assert gpu.graph_stats()["captured"] == 1


def decode_eager_then_replayed(gpu, seqs, num_seqs: int, steps: int):
    """`steps` greedy decode steps of sequences 0..num_seqs-1, each run launch by launch and
    then as a CUDA graph (rewriting the same KV slots with the same values): the two equal bit
    for bit; the eager step's picks are appended."""
    for i in range(steps):
        plan = [(s, 1) for s in range(num_seqs)]
        step = seqs.step(plan)
        gpu.cuda_graphs = False
        eager = gpu.run_step(step, [])
        gpu.cuda_graphs = True
        replayed = gpu.run_step(step, [])
        assert np.array_equal(eager["tokens"], replayed["tokens"]), f"decode step {i}"
        assert np.array_equal(eager["logprobs"], replayed["logprobs"]), f"decode step {i}"
        for row, (sid, _) in enumerate(plan):
            seqs.tokens[sid].append(int(eager["tokens"][row]))


def test_gemms_prepared_ahead_leave_the_steps_no_choice(core, sm, tiny_engine):
    """prepare_gemms_ahead (ModelRunner's at load) makes the cuBLASLt choices of more than 64
    rows (fewer are timed when first met) of every decode batch bucket and every 256 of a
    step's tokens: decode steps of 160 sequences (a bucket), launch by launch and replayed from
    their graph, and steps of 256 prompt tokens then make none of their own, and the replay
    equals the step run launch by launch, bit for bit."""
    def choices():
        return sorted((c["m"], c["n"], c["k"]) for c in gpu.gemm_choices() if c["m"] > 64)

    engine = load_engine(tiny_engine("llama", "bfloat16", targets=(sm,), max_batch_size=192,
                                     max_num_tokens=256, max_seq_len=64, tokens_per_block=16)[1])
    gpu = core.PlanExecutor(engine, num_blocks=400)
    prepared = gpu.prepare_gemms_ahead(192, 256)
    assert prepared > 0
    made = choices()
    assert len(made) > 0 and {m for m, _, _ in made} >= {160, 192, 256}, made
    assert gpu.prepare_gemms_ahead(192, 256) == 0  # all made already
    build = engine.config.build
    seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, 400, seed=17)
    gen = torch.Generator().manual_seed(17)
    for _ in range(160):
        seqs.add(torch.randint(0, engine.config.model.vocab_size, (16,), generator=gen).tolist())
    for first in range(0, 160, 16):  # 16 prompts of 16 tokens: 256 tokens a step
        plan = [(s, 16) for s in range(first, first + 16)]
        picks = gpu.run_step(seqs.step(plan), [])
        for row, (sid, _) in enumerate(plan):
            seqs.tokens[sid].append(int(picks["tokens"][row]))
    decode_eager_then_replayed(gpu, seqs, 160, 3)
    assert choices() == made, "a step made a GEMM choice of more than 64 rows the load had not"


def test_graphs_captured_at_load_serve_the_decode_steps(core, sm, tiny_engine):
    """capture_graphs (ModelRunner's at load) captures the greedy decode shapes that are the same
    at any context length: at 144 sequences (its bucket of 160) the KV is never split, and the
    steps that meet it replay the graph captured before, bit for bit the step run launch by
    launch; shapes that depend on the context (few sequences) are left to their first step."""
    engine = load_engine(tiny_engine("llama", "bfloat16", targets=(sm,), max_batch_size=192,
                                     max_num_tokens=192, max_seq_len=64, tokens_per_block=16)[1])
    gpu = core.PlanExecutor(engine, num_blocks=200)
    captured = gpu.capture_graphs(192)
    stats = gpu.graph_stats()
    assert stats["captured"] == captured and stats["replays"] == 0 and stats["eager_steps"] == 0
    assert 1 <= captured < 25, captured  # not the buckets below 2 * SMs / KV heads sequences
    build = engine.config.build
    seqs = PagedSequences(build.tokens_per_block, build.max_blocks_per_seq, 200, seed=17)
    gen = torch.Generator().manual_seed(17)
    for _ in range(144):
        seqs.add(torch.randint(0, engine.config.model.vocab_size,
                               (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen).tolist())
    for first in range(0, 144, 16):  # prompts 16 at a time: at most 192 tokens a step
        plan = [(s, len(seqs.tokens[s])) for s in range(first, first + 16)]
        picks = gpu.run_step(seqs.step(plan), [])
        for row, (sid, _) in enumerate(plan):
            seqs.tokens[sid].append(int(picks["tokens"][row]))
    before = gpu.graph_stats()
    decode_eager_then_replayed(gpu, seqs, 144, 4)
    stats = gpu.graph_stats()
    assert stats["captured"] == captured, "a decode step captured a graph the load had not"
    assert stats["replays"] - before["replays"] == 4


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_greedy_pick_is_argmax_and_log_softmax(core, sm, tiny_engine, dtype):
    engine = load_engine(tiny_engine("llama", dtype, targets=(sm,))[1])
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS)
    seqs = sequences(engine, (12, 21, 7, 19, 3), seed=5)
    plans = [[(0, 12), (1, 21), (2, 7), (3, 19), (4, 3)]] + [[(s, 1) for s in range(5)]] * 4
    for plan in plans:
        step = seqs.step(plan)
        full = gpu.run_step(step, list(range(len(plan))))
        logits = torch.from_numpy(full["logits"])
        assert logits.shape == (len(plan), engine.config.model.vocab_size)
        want = logits.argmax(-1)
        assert full["tokens"].tolist() == want.tolist()
        want_lp = torch.log_softmax(logits.double(), -1)[torch.arange(len(plan)), want]
        assert np.abs(full["logprobs"] - want_lp.numpy()).max() < 1e-5
        picks = gpu.run_step(step, [])  # only the picks come back
        assert picks["logits"].shape[0] == 0
        assert picks["tokens"].tolist() == full["tokens"].tolist()
        some = gpu.run_step(step, [1, 3])
        assert np.array_equal(some["logits"], full["logits"][[1, 3]])
        advance(seqs, plan, full["logits"])


@pytest.mark.parametrize("graphs", [False, True])
def test_programmatic_launch_equals_serial_launch(core, sm, tiny_engine, graphs):
    engine = load_engine(tiny_engine("llama", "bfloat16", targets=(sm,), max_seq_len=256,
                                     max_num_tokens=256, tokens_per_block=16)[1])
    metas = [entry["sm"][str(sm)] for entry in engine.kernels["kernels"].values()]
    assert all(m["pdl"] == (sm >= 90) for m in metas)
    gpu = core.PlanExecutor(engine, num_blocks=NUM_BLOCKS, cuda_graphs=graphs)
    assert gpu.programmatic_launch
    seqs = sequences(engine, (110, 10, 60, 33), seed=11)
    plans = [[(0, 110), (1, 10), (2, 60), (3, 33)]] + [[(s, 1) for s in range(4)]] * 6 \
        + [[(1, 1), (3, 1)]] * 3
    for i, plan in enumerate(plans):
        step = seqs.step(plan)
        gpu.programmatic_launch = False
        serial = gpu.forward(step)
        gpu.programmatic_launch = True
        overlapped = gpu.forward(step)  # rewrites the same KV slots with the same values
        assert np.array_equal(serial, overlapped), f"step {i}: programmatic launch changed the logits"
        advance(seqs, plan, serial)
    if graphs:
        assert gpu.graph_stats()["captured"] >= 1
