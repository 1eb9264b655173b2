"""Each Triton kernel against its torch reference (kiln.builder.ops) on fresh random inputs.

Shared by tests/gpu/test_kernels.py (on the GPU) and tests/builder/test_kernels_interpret.py
(Triton's interpreter on the CPU). Every check poisons the outputs (NaN) first, so an element
the kernel does not write fails, and measures ||out - ref|| / ||ref|| against the reference
computed in float32 on the CPU.
"""
from __future__ import annotations

import random

import torch

from kiln.builder import ops
from kiln.builder.ir import Node

# ||out - ref|| / ||ref|| bounds (docs: float32 far under 1e-3; 16-bit operands 1e-3..1e-2).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
LLAMA3_ROPE = {"head_dim": 64, "theta": 500000.0,
               "scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    assert not torch.isnan(out).any(), "the kernel left NaN (unwritten or poisoned) elements"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _ref(op: str, inputs, attrs=None, ctx=None, n_out=1):
    node = Node(op, [f"i{i}" for i in range(len(inputs))], [f"o{i}" for i in range(n_out)],
                attrs or {})
    return ops.run(node, [t.cpu() for t in inputs], ctx or ops.StepContext())


def _rand(gen, shape, dtype, device, scale=1.0, offset=0.0):
    return (torch.randn(shape, generator=gen) * scale + offset).to(dtype).to(device)


def check_rmsnorm(device, dtype, rows, width, seed):
    from kiln.builder.kernels import norm
    g = torch.Generator().manual_seed(seed)
    wide = _rand(g, (rows, width + 8), dtype, device, 2.0)  # a strided view, as a split gives
    x, w = wide[:, 3:3 + width], _rand(g, (width,), dtype, device, 0.2, 1.0)
    eps = 1e-6
    out = norm.rmsnorm(x, w, eps, out=torch.full((rows, width), float("nan"), dtype=dtype, device=device))
    (ref,) = _ref("rmsnorm", [x, w], {"eps": eps})
    return rel_err(out, ref)


def check_add_rmsnorm(device, dtype, rows, width, seed):
    from kiln.builder.kernels import norm
    g = torch.Generator().manual_seed(seed)
    x, res = _rand(g, (rows, width), dtype, device), _rand(g, (rows, width), dtype, device, 3.0)
    w = _rand(g, (width,), dtype, device, 0.2, 1.0)
    out, total = norm.add_rmsnorm(x, res, w, 1e-5)
    ref_out, ref_total = _ref("add_rmsnorm", [x, res, w], {"eps": 1e-5}, n_out=2)
    return max(rel_err(out, ref_out), rel_err(total, ref_total))


def check_head_rmsnorm(device, dtype, rows, heads, head_dim, seed):
    from kiln.builder.kernels import norm
    g = torch.Generator().manual_seed(seed)
    wide = _rand(g, (rows, 2 * heads * head_dim), dtype, device)
    x = wide[:, heads * head_dim:]  # strided input, as the k view of a fused qkv
    w = _rand(g, (head_dim,), dtype, device, 0.2, 1.0)
    out = norm.head_rmsnorm(x, w, 1e-6, head_dim)
    (ref,) = _ref("head_rmsnorm", [x, w], {"eps": 1e-6, "head_dim": head_dim})
    return rel_err(out, ref)


def check_silu_mul(device, dtype, rows, width, seed):
    from kiln.builder.kernels import elementwise
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, 2 * width), dtype, device, 2.0)
    (ref,) = _ref("silu_mul", [x])
    return rel_err(elementwise.silu_mul(x), ref)


def check_elementwise(device, dtype, rows, width, seed):
    from kiln.builder.kernels import elementwise as ew
    g = torch.Generator().manual_seed(seed)
    a, b = _rand(g, (rows, width), dtype, device), _rand(g, (rows, width), dtype, device)
    errs = [rel_err(ew.binary(a, b, ew.ADD), _ref("add", [a, b])[0]),
            rel_err(ew.binary(a, b, ew.MUL), _ref("mul", [a, b])[0]),
            rel_err(ew.silu(a), _ref("silu", [a])[0]),
            rel_err(ew.cast(a, torch.float32), _ref("cast", [a], {"dtype": "float32"})[0])]
    return max(errs)


def check_gather(device, dtype, rows, width, seed):
    """embedding and gather_last are exact copies: the error must be 0."""
    from kiln.builder.kernels import gather
    g = torch.Generator().manual_seed(seed)
    table = _rand(g, (rows, width), dtype, device)
    index = torch.randint(0, rows, (max(1, rows // 2),), generator=g, dtype=torch.int32).to(device)
    (ref,) = _ref("embedding", [index, table])
    (ref2,) = _ref("gather_last", [table, index])
    return max(rel_err(gather.gather_rows(table, index), ref), rel_err(gather.gather_rows(table, index), ref2))


def check_rope(device, dtype, tokens, heads, head_dim, seed, max_pos=131072):
    """The rope_kv kernel with only the q path: rotate-half RoPE with llama3 scaling."""
    from kiln.builder.kernels import rope
    g = torch.Generator().manual_seed(seed)
    attrs = dict(LLAMA3_ROPE, head_dim=head_dim)
    x = _rand(g, (tokens, heads * head_dim), dtype, device)
    positions = torch.randint(0, max_pos, (tokens,), generator=g, dtype=torch.int32).to(device)
    table = torch.tensor(rope.inv_freq_table(attrs), dtype=torch.float32, device=device)
    cache = torch.zeros((1, 1, 1, head_dim), dtype=dtype, device=device)
    slots = torch.full((tokens,), -1, dtype=torch.int64, device=device)  # no cache write
    empty = x[:, :0]
    out = rope.rope_kv(x, empty, empty, positions, slots, cache, cache, table, head_dim)
    (ref,) = _ref("rope", [x.float(), positions], attrs)
    return rel_err(out, ref)


def paged_step(gen: random.Random, tokens_per_block: int, num_blocks: int, prefixes, q_lens):
    """A step over len(q_lens) sequences with cached prefixes: the ABI arrays (CPU tensors)."""
    free = list(range(num_blocks))
    gen.shuffle(free)
    max_blocks = max(-(-(p + q) // tokens_per_block) for p, q in zip(prefixes, q_lens))
    table = torch.zeros((len(q_lens), max_blocks), dtype=torch.int32)
    positions, slots, qstart = [], [], [0]
    for b, (p, q) in enumerate(zip(prefixes, q_lens)):
        blocks = [free.pop() for _ in range(-(-(p + q) // tokens_per_block))]
        table[b, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        for pos in range(p, p + q):
            positions.append(pos)
            slots.append(blocks[pos // tokens_per_block] * tokens_per_block + pos % tokens_per_block)
        qstart.append(qstart[-1] + q)
    return {"positions": torch.tensor(positions, dtype=torch.int32),
            "slot_mapping": torch.tensor(slots, dtype=torch.int64), "block_tables": table,
            "context_lens": torch.tensor([p + q for p, q in zip(prefixes, q_lens)], dtype=torch.int32),
            "query_start": torch.tensor(qstart, dtype=torch.int32)}


def check_attention(device, dtype, nq, nkv, head_dim, prefixes, q_lens, seed,
                    tokens_per_block=16, num_splits=None, rope_on=True):
    """RoPE + KV write + paged attention (the attention op) against the reference; returns
    (output error, cache error)."""
    from kiln.builder.kernels import attention, rope
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    num_blocks = sum(-(-(p + q) // tokens_per_block) for p, q in zip(prefixes, q_lens)) + 3
    step = paged_step(rng, tokens_per_block, num_blocks, prefixes, q_lens)
    t = int(step["query_start"][-1])
    cache = _rand(g, (1, 2, num_blocks, nkv, tokens_per_block, head_dim), dtype, "cpu")
    qkv = _rand(g, (t, (nq + 2 * nkv) * head_dim), dtype, "cpu")
    q, k, v = torch.split(qkv, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    attrs = {"layer": 0, "num_heads": nq, "num_kv_heads": nkv, "head_dim": head_dim,
             "scale": head_dim ** -0.5,
             "rope": dict(LLAMA3_ROPE, head_dim=head_dim) if rope_on else None}
    ref_cache = cache.clone()
    inputs = [q, k, v] + [step[n] for n in ("positions", "slot_mapping", "block_tables",
                                             "context_lens", "query_start")]
    (ref,) = _ref("attention", inputs, attrs, ops.StepContext(kv_cache=ref_cache))

    dev = {n: x.to(device) for n, x in step.items()}
    kc, qkv_d = cache.to(device), qkv.to(device)
    qd, kd, vd = torch.split(qkv_d, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    table = torch.tensor(rope.inv_freq_table(attrs["rope"]) if rope_on else [0.0],
                         dtype=torch.float32, device=device)
    q_rot = rope.rope_kv(qd, kd, vd, dev["positions"], dev["slot_mapping"], kc[0, 0], kc[0, 1],
                         table, head_dim, rope=rope_on)
    out = torch.full((t, nq * head_dim), float("nan"), dtype=dtype, device=device)
    attention.paged_attention(q_rot, kc[0, 0], kc[0, 1], dev["block_tables"],
                              dev["context_lens"], dev["query_start"], nq, head_dim,
                              attrs["scale"], num_splits=num_splits, out=out)
    slots = step["slot_mapping"]
    blocks, offs = slots // tokens_per_block, slots % tokens_per_block
    written = kc.cpu()[0, :, blocks, :, offs, :]
    return rel_err(out, ref), rel_err(written, ref_cache[0, :, blocks, :, offs, :])


def check_greedy(device, rows, vocab, seed):
    """argmax with ties: returns the number of rows that differ from torch.argmax."""
    from kiln.builder.kernels import sampling
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((rows, vocab), generator=g).round(decimals=1)  # many ties
    got = sampling.greedy(logits.to(device)).cpu()
    return int((got.long() != logits.argmax(-1)).sum())


def check_sampling(device, vocab, seed, draws=64):
    """Every draw lies in the reference's kept set (temperature, top-k, top-p, min-p), top-k 1
    is greedy, and different seeds give different tokens. Returns the number of violations."""
    from kiln.builder.kernels import sampling
    g = torch.Generator().manual_seed(seed)
    row = torch.randn(vocab, generator=g) * 3
    bad = 0
    for temperature, top_k, top_p, min_p in [(1.0, 0, 1.0, 0.0), (0.7, 20, 1.0, 0.0),
                                             (1.3, 0, 0.8, 0.0), (1.0, 0, 1.0, 0.1),
                                             (0.9, 50, 0.9, 0.05)]:
        logits = row.expand(draws, vocab).contiguous().to(device)
        n = lambda v, dt: torch.full((draws,), v, dtype=dt, device=device)  # noqa: E731
        seeds = torch.arange(draws, dtype=torch.int64, device=device) + seed * 1000
        got = sampling.sample(logits, n(temperature, torch.float32), n(top_k, torch.int32),
                              n(top_p, torch.float32), n(min_p, torch.float32), seeds).cpu()
        keep = sampling.reference_filter(row, temperature, top_k, top_p, min_p)
        bad += int((~keep[got.long()]).sum())
        if top_k == 0 and top_p == 1.0 and min_p == 0.0 and len(set(got.tolist())) < 4:
            bad += 1  # an unfiltered draw over a wide distribution must vary with the seed
    logits = row.expand(4, vocab).contiguous().to(device)
    one = sampling.sample(logits, torch.ones(4, device=device), torch.ones(4, dtype=torch.int32, device=device),
                          torch.ones(4, device=device), torch.zeros(4, device=device),
                          torch.arange(4, dtype=torch.int64, device=device)).cpu()
    bad += int((one.long() != row.argmax()).sum())
    return bad


# Cases the CPU interpreter can run in reasonable time: (name, check, kwargs, bound).
def interpreter_cases():
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases = []
    for dtype in (f32, f16, bf16):
        d = str(dtype).split(".")[1]
        for rows, width in [(3, 64), (5, 576), (2, 1000)]:
            cases.append((f"rmsnorm-{d}-{rows}x{width}", check_rmsnorm,
                          dict(dtype=dtype, rows=rows, width=width, seed=rows), TOL[dtype]))
            cases.append((f"add_rmsnorm-{d}-{rows}x{width}", check_add_rmsnorm,
                          dict(dtype=dtype, rows=rows, width=width, seed=rows + 1), TOL[dtype]))
        cases += [
            (f"head_rmsnorm-{d}", check_head_rmsnorm,
             dict(dtype=dtype, rows=4, heads=6, head_dim=32, seed=3), TOL[dtype]),
            (f"silu_mul-{d}", check_silu_mul, dict(dtype=dtype, rows=3, width=1500, seed=1), TOL[dtype]),
            (f"elementwise-{d}", check_elementwise, dict(dtype=dtype, rows=3, width=1100, seed=2), TOL[dtype]),
            (f"gather-{d}", check_gather, dict(dtype=dtype, rows=7, width=300, seed=3), 0.0),
            (f"rope-{d}", check_rope, dict(dtype=dtype, tokens=5, heads=3, head_dim=64, seed=4), TOL[dtype]),
        ]
    for dtype in (f32, f16):
        d = str(dtype).split(".")[1]
        cases += [
            (f"attention-mixed-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[0, 21], q_lens=[19, 5], seed=5), TOL[dtype]),
            (f"attention-decode-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[0, 40, 3], q_lens=[1, 1, 1], seed=6), TOL[dtype]),
        ]
    cases += [
        ("attention-split3-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5], q_lens=[1, 1], seed=6, num_splits=3), TOL[f32]),
        ("attention-norope-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=4, head_dim=16, prefixes=[0], q_lens=[9], seed=7, rope_on=False), TOL[f32]),
        ("greedy", check_greedy, dict(rows=3, vocab=5000, seed=8), 0),
        ("sampling", check_sampling, dict(vocab=300, seed=9, draws=16), 0),
    ]
    return cases


if __name__ == "__main__":  # TRITON_INTERPRET=1 python kernel_checks.py -> JSON {name: [value, bound]}
    import json
    import sys
    results = {}
    for name, fn, kwargs, bound in interpreter_cases():
        try:
            value = fn("cpu", **kwargs)
            results[name] = [list(value) if isinstance(value, tuple) else value, bound]
        except Exception as e:  # reported per case
            results[name] = [f"{type(e).__name__}: {e}", bound]
        print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps(results))
