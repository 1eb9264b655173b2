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


def check_layernorm(device, dtype, rows, width, seed):
    from kiln.builder.kernels import norm
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, width), dtype, device) + 0.5  # off-centre rows: the mean matters
    w = _rand(g, (width,), dtype, device, 0.2, 1.0)
    b = _rand(g, (width,), dtype, device, 0.2)
    (ref,) = _ref("layernorm", [x, w], {"eps": 1e-5})
    (ref_b,) = _ref("layernorm", [x, w, b], {"eps": 1e-5})
    return max(rel_err(norm.layernorm(x, w, 1e-5), ref), rel_err(norm.layernorm(x, w, 1e-5, b), ref_b))


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


def check_gelu_tanh_mul(device, dtype, rows, width, seed):
    from kiln.builder.kernels import elementwise
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, (rows, 2 * width), dtype, device, 4.0)  # both tails of the tanh
    (ref,) = _ref("gelu_tanh_mul", [x])
    return rel_err(elementwise.gelu_tanh_mul(x), ref)


def check_elementwise(device, dtype, rows, width, seed):
    from kiln.builder.kernels import elementwise as ew
    g = torch.Generator().manual_seed(seed)
    a, b = _rand(g, (rows, width), dtype, device), _rand(g, (rows, width), dtype, device)
    wide = a * 20.0  # scores and logits far into the softcap's tanh
    scale = float(torch.tensor(48 ** 0.5, dtype=dtype))
    errs = [rel_err(ew.binary(a, b, ew.ADD), _ref("add", [a, b])[0]),
            rel_err(ew.binary(a, b, ew.MUL), _ref("mul", [a, b])[0]),
            rel_err(ew.silu(a), _ref("silu", [a])[0]),
            rel_err(ew.unary(a, ew.GELU_TANH), _ref("gelu_tanh", [a])[0]),
            rel_err(ew.unary(a, ew.SCALE, scale), _ref("scale", [a], {"value": scale})[0]),
            rel_err(ew.unary(wide, ew.SOFTCAP, 3.0), _ref("softcap", [wide], {"cap": 3.0})[0]),
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


def _attention_op(fused, q, k, v, step, k_cache, v_cache, table, nq, head_dim, out, rope_on,
                  num_splits=None, slot_mapping=None, k_scale=None, v_scale=None, window=0,
                  softcap=0.0, **fp8_out):
    """The attention op on the GPU kernels into `out`: rope_kv_kernel then the attention
    kernels, or (fused) as the plan runs it, RoPE and the KV write inside the decode kernel.
    Returns the q the attention kernels read (rotated by rope_kv_kernel unless fused).
    v_cache is [num_blocks, nkv, tokens_per_block, head_dim] in any dtype: the kernels get it
    in the layout they read (rope.v_cache_stored) and what they write comes back to it."""
    from kiln.builder.kernels import attention, rope
    slots = step["slot_mapping"] if slot_mapping is None else slot_mapping
    stored = rope.v_cache_stored(v_cache)
    if not fused:
        q = rope.rope_kv(q, k, v, step["positions"], slots, k_cache, stored, table, head_dim,
                         rope=rope_on, k_scale=k_scale, v_scale=v_scale)
    new_kv = dict(k=k, v=v, positions=step["positions"], slot_mapping=slots, inv_freq=table,
                  rope=rope_on)
    attention.paged_attention(q, k_cache, stored, step["block_tables"], step["context_lens"],
                              step["query_start"], nq, head_dim, head_dim ** -0.5,
                              num_splits=num_splits, out=out, k_scale=k_scale, v_scale=v_scale,
                              new_kv=new_kv if fused else None, window=window,
                              softcap=softcap, **fp8_out)
    if stored is not v_cache:
        v_cache.copy_(rope.v_cache_view(stored))
    return q


def check_attention(device, dtype, nq, nkv, head_dim, prefixes, q_lens, seed,
                    tokens_per_block=16, num_splits=None, rope_on=True, fused=False, window=0,
                    softcap=0.0):
    """RoPE + KV write + paged attention (the attention op) against the reference; returns
    (output error, cache error). fused: RoPE and the KV write as the plan runs them (inside
    the decode kernel for a decode step), not by rope_kv_kernel first. window, softcap: the
    attention op's attrs."""
    from kiln.builder.kernels import rope
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
             "rope": dict(LLAMA3_ROPE, head_dim=head_dim) if rope_on else None,
             **({"window": window} if window else {}), **({"softcap": softcap} if softcap else {})}
    ref_cache = cache.clone()
    inputs = [q, k, v] + [step[n] for n in ("positions", "slot_mapping", "block_tables",
                                             "context_lens", "query_start")]
    (ref,) = _ref("attention", inputs, attrs, ops.StepContext(kv_cache=ref_cache))

    dev = {n: x.to(device) for n, x in step.items()}
    kc, qkv_d = cache.to(device), qkv.to(device)
    qd, kd, vd = torch.split(qkv_d, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    table = torch.tensor(rope.inv_freq_table(attrs["rope"]) if rope_on else [0.0],
                         dtype=torch.float32, device=device)
    out = torch.full((t, nq * head_dim), float("nan"), dtype=dtype, device=device)
    _attention_op(fused, qd, kd, vd, dev, kc[0, 0], kc[0, 1], table, nq, head_dim, out, rope_on,
                  num_splits, window=window, softcap=softcap)
    slots = step["slot_mapping"]
    blocks, offs = slots // tokens_per_block, slots % tokens_per_block
    written = kc.cpu()[0, :, blocks, :, offs, :]
    return rel_err(out, ref), rel_err(written, ref_cache[0, :, blocks, :, offs, :])


def compare_fused_decode(device, dtype, nq, nkv, head_dim, prefixes, seed, num_splits,
                         tokens_per_block=16, kv_dtype=None):
    """A decode step's attention op both ways: rope_kv_kernel then the decode kernel, and
    RoPE + KV write inside the decode kernel. Returns the elements of the output and of the
    cache that differ (the fused way computes the same values with the same functions)."""
    from kiln.builder.kernels import rope
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    q_lens = [1] * len(prefixes)
    num_blocks = sum(-(-(p + 1) // tokens_per_block) for p in prefixes) + 3
    step = {n: x.to(device) for n, x in
            paged_step(rng, tokens_per_block, num_blocks, prefixes, q_lens).items()}
    shape = (num_blocks, nkv, tokens_per_block, head_dim)
    if kv_dtype:
        k_scale, v_scale = _kv_scales(g, kv_dtype)
        cache = _quantized_cache(g, kv_dtype, shape, k_scale, v_scale).to(device)
        scales = dict(k_scale=k_scale.to(device), v_scale=v_scale.to(device))
    else:
        cache, scales = _rand(g, (1, 2, *shape), dtype, device), {}
    qkv = _rand(g, (len(prefixes), (nq + 2 * nkv) * head_dim), dtype, device)
    q, k, v = torch.split(qkv, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    table = torch.tensor(rope.inv_freq_table(dict(LLAMA3_ROPE, head_dim=head_dim)),
                         dtype=torch.float32, device=device)
    outs, caches = [], []
    for fused in (False, True):
        kc = cache.clone()
        out = torch.full((len(prefixes), nq * head_dim), float("nan"), dtype=dtype, device=device)
        _attention_op(fused, q, k, v, step, kc[0, 0], kc[0, 1], table, nq, head_dim, out, True,
                      num_splits, **scales)
        outs.append(out.cpu())
        caches.append(kc.cpu())
    return _mismatches(outs[0], outs[1]), _mismatches(caches[0], caches[1])


def check_attention_fp8_output(device, dtype, nq, nkv, head_dim, prefixes, q_lens, seed,
                               num_splits=None, tokens_per_block=16):
    """The attention op writing its output as e4m3 (ops.attention's out_qdtype, as the plan
    runs it: RoPE and the KV write inside, decodes first, then the flash kernel) against the
    same kernels' 16-bit output quantized by the reference (pack.to_fp8, saturating).
    Returns the e4m3 codes that differ."""
    from kiln.builder.kernels import rope
    from kiln.quantize import pack
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    num_blocks = sum(-(-(p + q) // tokens_per_block) for p, q in zip(prefixes, q_lens)) + 3
    step = {n: x.to(device) for n, x in
            paged_step(rng, tokens_per_block, num_blocks, prefixes, q_lens).items()}
    t = int(step["query_start"][-1])
    cache = _rand(g, (2, num_blocks, nkv, tokens_per_block, head_dim), dtype, device)
    qkv = _rand(g, (t, (nq + 2 * nkv) * head_dim), dtype, device)
    q, k, v = torch.split(qkv, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    table = torch.tensor(rope.inv_freq_table(dict(LLAMA3_ROPE, head_dim=head_dim)),
                         dtype=torch.float32, device=device)
    args = (True, q, k, v, step, cache[0], cache[1], table, nq, head_dim)
    out = torch.full((t, nq * head_dim), float("nan"), dtype=dtype, device=device)
    _attention_op(*args, out, True, num_splits)
    # The largest outputs map past 448: they saturate.
    scale = torch.tensor([out.float().abs().max().item() / 600], device=device)
    fp8 = torch.empty((t, nq * head_dim), dtype=torch.float8_e4m3fn, device=device)
    _attention_op(*args, torch.empty_like(out), True, num_splits, out_fp8=fp8, out_scale=scale)
    return _mismatches(fp8, pack.to_fp8(out.cpu(), scale.cpu()))


KV_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "int8": torch.int8}
KV_BOUND = {"float8_e4m3fn": 448.0, "int8": 127.0}


def _kv_scales(gen, kv_dtype):
    """k_scale, v_scale (float32 [1]) that map about +-2.5..3.75 onto the format's range, so
    the tails of unit normals saturate."""
    return [torch.tensor([2.5 / KV_BOUND[kv_dtype]]) * (1 + 0.5 * torch.rand(1, generator=gen))
            for _ in range(2)]


def _quantized_cache(gen, kv_dtype, shape, k_scale, v_scale):
    from kiln.builder.ops.quant import quantize_kv
    cache = torch.empty((1, 2, *shape), dtype=KV_DTYPES[kv_dtype])
    cache[0, 0] = quantize_kv(torch.randn(shape, generator=gen), kv_dtype, k_scale)
    cache[0, 1] = quantize_kv(torch.randn(shape, generator=gen), kv_dtype, v_scale)
    return cache


def _mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements of two quantized tensors that differ (an fp8 -0 equals +0: which one a
    hardware conversion gives for a negative value too small to keep is not specified)."""
    return int((a.cpu().float() != b.cpu().float()).sum())


def _codes(kv_dtype: str) -> torch.Tensor:
    """Every finite value of the format, ascending (one zero)."""
    if kv_dtype == "int8":
        return torch.arange(-128, 128).float()
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    return codes[torch.isfinite(codes)].unique().sort().values


def _steps_apart(a: torch.Tensor, b: torch.Tensor, kv_dtype: str) -> torch.Tensor:
    """How many codes of the format lie between two quantized tensors, elementwise."""
    codes = _codes(kv_dtype)
    return (torch.searchsorted(codes, a.cpu().float().reshape(-1))
            - torch.searchsorted(codes, b.cpu().float().reshape(-1))).abs()


def check_attention_quant(device, dtype, kv_dtype, nq, nkv, head_dim, prefixes, q_lens, seed,
                          tokens_per_block=16, num_splits=None, rope_on=True,
                          kernel_writes=True, fused=False):
    """The attention op over a float8_e4m3fn or int8 KV cache with static k/v scales. Returns
    (output error, bad k codes, bad v codes):
    - the write against the reference's (float32 RoPE rounded to the dtype, then
      quantize_kv): v, and k without RoPE, exactly; a rotated k may be one code off where the
      kernel's float32 rounding (FMA, libdevice cos/sin) and torch's put k on either side of a
      dtype rounding boundary, never more. Values outside the step's slots must be untouched
      (counted with v).
    - the output against the reference over the same data: q as the kernel rotated it and the
      cache as the kernel wrote it, so only the attention's arithmetic is measured.
    kernel_writes=False leaves the step's cache write to the reference: Triton's interpreter
    converts float32 to fp8 without carrying the rounding into the exponent. fused: as in
    check_attention (q for the reference rotated by rope_kv_kernel, writing nothing)."""
    from kiln.builder.kernels import rope
    from kiln.builder.ops.attention import write_kv
    from kiln.builder.ops.quant import dequantize_kv
    from kiln.builder.ops.rope import apply_rope
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    num_blocks = sum(-(-(p + q) // tokens_per_block) for p, q in zip(prefixes, q_lens)) + 3
    step = paged_step(rng, tokens_per_block, num_blocks, prefixes, q_lens)
    t = int(step["query_start"][-1])
    k_scale, v_scale = _kv_scales(g, kv_dtype)
    cache = _quantized_cache(g, kv_dtype, (num_blocks, nkv, tokens_per_block, head_dim),
                             k_scale, v_scale)
    qkv = _rand(g, (t, (nq + 2 * nkv) * head_dim), dtype, "cpu")
    q, k, v = torch.split(qkv, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    rope_attrs = dict(LLAMA3_ROPE, head_dim=head_dim) if rope_on else None
    quant = (kv_dtype, k_scale, v_scale)
    slots = step["slot_mapping"]
    ref_cache = cache.clone()
    # RoPE in float32, rounded once to the dtype, as the kernel computes it (and check_rope
    # compares it); the in-dtype reference rounds each product, a code apart at times.
    k_rot = apply_rope(k.float(), step["positions"], rope_attrs).to(dtype) if rope_on else k
    write_kv(ref_cache, 0, k_rot, v, slots, quant)

    start = cache.clone() if kernel_writes else ref_cache.clone()
    dev = {n: x.to(device) for n, x in step.items()}
    kc, qkv_d = start.to(device), qkv.to(device)
    ks, vs = k_scale.to(device), v_scale.to(device)
    qd, kd, vd = torch.split(qkv_d, [nq * head_dim, nkv * head_dim, nkv * head_dim], dim=1)
    table = torch.tensor(rope.inv_freq_table(rope_attrs) if rope_on else [0.0],
                         dtype=torch.float32, device=device)
    own = dev["slot_mapping"] if kernel_writes else torch.full_like(dev["slot_mapping"], -1)
    out = torch.full((t, nq * head_dim), float("nan"), dtype=dtype, device=device)
    q_rot = _attention_op(fused, qd, kd, vd, dev, kc[0, 0], kc[0, 1], table, nq, head_dim, out,
                          rope_on, num_splits, own, ks, vs)
    if fused:  # the q the kernel rotated, for the reference: rope_kv_kernel's, writing nothing
        q_rot = rope.rope_kv(qd, kd, vd, dev["positions"], torch.full_like(own, -1), kc[0, 0],
                             rope.v_cache_stored(kc[0, 1]), table, head_dim, rope=rope_on,
                             k_scale=ks, v_scale=vs)

    got = kc.cpu()
    blocks, offs = slots // tokens_per_block, slots % tokens_per_block
    written = [got[0, half][blocks, :, offs] for half in (0, 1)]  # [t, nkv, head_dim]
    want = [ref_cache[0, half][blocks, :, offs] for half in (0, 1)]
    bad_k = (int((_steps_apart(written[0], want[0], kv_dtype) > 1).sum()) if rope_on
             else _mismatches(written[0], want[0]))
    untouched = torch.ones((num_blocks, nkv, tokens_per_block), dtype=torch.bool)
    untouched[blocks, :, offs] = False
    bad_v = _mismatches(written[1], want[1]) + _mismatches(got[0, :, untouched],
                                                           cache[0, :, untouched])

    # The reference re-quantizes the dequantized codes it is given: the same codes again.
    read_cache = cache.clone()
    as_written = [dequantize_kv(x, s).reshape(t, nkv * head_dim)
                  for x, s in ((written[0], k_scale), (written[1], v_scale))]
    attrs = {"layer": 0, "num_heads": nq, "num_kv_heads": nkv, "head_dim": head_dim,
             "scale": head_dim ** -0.5, "kv_dtype": kv_dtype, "rope": None}
    inputs = [q_rot.cpu(), *as_written] + [step[n] for n in (
        "positions", "slot_mapping", "block_tables", "context_lens", "query_start")]
    inputs += [k_scale, v_scale]
    (ref,) = _ref("attention", inputs, attrs, ops.StepContext(kv_cache=read_cache))
    assert _mismatches(read_cache, got) == 0, "the reference did not reproduce the cache"
    return rel_err(out, ref), bad_k, bad_v


def _edge_values(gen, kv_dtype, shape, scale):
    """Half exact ties between two adjacent codes (after dividing by the power-of-two scale),
    half normals spread past the saturation bound, and zeros, tiny and huge values."""
    codes = _codes(kv_dtype)
    lo = torch.randint(0, len(codes) - 1, shape, generator=gen)
    ties = (codes[lo] + codes[lo + 1]) / 2 * scale
    wide = torch.randn(shape, generator=gen) * (3 * KV_BOUND[kv_dtype]) * scale
    x = torch.where(torch.rand(shape, generator=gen) < 0.5, ties, wide)
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e6, -1e6, 8000.0, -129.0]) * scale
    x.view(-1)[:len(special)] = special
    return x


def check_kv_write(device, dtype, kv_dtype, tokens, nkv, head_dim, seed, tokens_per_block=16):
    """rope_kv's quantized cache write (no RoPE) against quantize_kv on edge values: ties,
    saturation, signed zeros, tiny values. Returns the number of cache values that differ."""
    from kiln.builder.kernels import rope
    from kiln.builder.ops.attention import write_kv
    g = torch.Generator().manual_seed(seed)
    k_scale, v_scale = torch.tensor([2.0 ** -4]), torch.tensor([2.0 ** 3])  # x / scale exact
    shape = (tokens, nkv * head_dim)
    k = _edge_values(g, kv_dtype, shape, k_scale).to(dtype)
    v = _edge_values(g, kv_dtype, shape, v_scale).to(dtype)
    num_blocks = -(-tokens // tokens_per_block) + 1
    slots = torch.randperm(num_blocks * tokens_per_block, generator=g)[:tokens]
    cache = torch.zeros((1, 2, num_blocks, nkv, tokens_per_block, head_dim),
                        dtype=KV_DTYPES[kv_dtype])
    ref = cache.clone()
    write_kv(ref, 0, k, v, slots, (kv_dtype, k_scale, v_scale))
    kc = cache.to(device)
    positions = torch.arange(tokens, dtype=torch.int32, device=device)
    v_stored = rope.v_cache_stored(kc[0, 1])
    rope.rope_kv(k.to(device)[:, :head_dim], k.to(device), v.to(device), positions,
                 slots.to(device), kc[0, 0], v_stored, torch.zeros(1, device=device), head_dim,
                 rope=False, k_scale=k_scale.to(device), v_scale=v_scale.to(device))
    kc[0, 1] = rope.v_cache_view(v_stored)
    return _mismatches(kc, ref)


def check_greedy(device, rows, vocab, seed, chunks=1, dtype=torch.float32):
    """argmax with ties, the log-softmax there, and -1 for a row with NaN or no finite value,
    each row in one program or split in `chunks`, over logits of `dtype` (a 16-bit one as the
    LM head writes them, compared with torch on their float32 cast): returns the number of rows
    that differ from torch."""
    from kiln.builder.kernels import sampling
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((rows + 2, vocab), generator=g).round(decimals=1) * 4  # many ties
    logits[rows, vocab // 2] = float("nan")
    logits[rows + 1] = float("-inf")
    logits = logits.to(dtype)
    tokens, logprobs = sampling.greedy(logits.to(device), chunks=chunks)
    logits = logits.float()
    tokens, logprobs = tokens.cpu().long(), logprobs.cpu()
    want = logits[:rows].argmax(-1)
    want_lp = torch.log_softmax(logits[:rows].double(), -1)[torch.arange(rows), want]
    bad = int((tokens[:rows] != want).sum()) + int(((logprobs[:rows] - want_lp).abs() > 1e-5).sum())
    return bad + int(tokens[rows] != -1) + int(tokens[rows + 1] != -1)


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


def check_small_m_gemm(device, dtype, m, n, k, seed, config, bias=True, residual=False):
    """The M <= 16 alternative of a linear (kernels/gemm.py) against ops' linear, x a strided
    view and out poisoned; the worst of out's rel_err and that of any row M.. it wrote.
    `residual`: a linear with a residual (a strided view) added to its product."""
    from kiln.builder.kernels import gemm
    g = torch.Generator().manual_seed(seed)
    wide = _rand(g, (m, k + 24), dtype, device)
    x = wide[:, 8:8 + k]
    w = _rand(g, (n, k), dtype, device, k ** -0.5)
    b = _rand(g, (n,), dtype, device) if bias else None
    res = _rand(g, (m, n + 8), dtype, device)[:, 4:4 + n] if residual else None
    out = torch.full((m + 2, n), float("nan"), dtype=dtype, device=device)
    gemm.linear_small_m(x, w, b, config=config, out=out[:m], out_res=res)
    (ref,) = _ref("linear", [x, w] + ([b] if bias else []) + ([res] if residual else []),
                  {"residual": True} if residual else None)
    assert torch.isnan(out[m:]).all(), "the kernel wrote rows beyond M"
    return rel_err(out[:m], ref)


def check_gemv(device, dtype, n, k, seed, config, prologue="plain", bias=False, residual=False):
    """The one-row alternative of a linear (gemv_kernel) against ops' `prologue` ("plain",
    "rmsnorm", "add_rmsnorm" or "silu_mul") then linear, x the first row of a strided view and
    out poisoned: out's rel_err; add_rmsnorm's sum must come out exactly. `residual`: a linear
    with a residual added to its product."""
    from kiln.builder.kernels import gemm
    g = torch.Generator().manual_seed(seed)
    width = 2 * k if prologue == "silu_mul" else k
    wide = _rand(g, (3, width + 24), dtype, device)
    x = wide[:, 8:8 + width]
    res = _rand(g, (1, k), dtype, device)
    gamma = _rand(g, (k,), dtype, device, 0.1, 1.0)
    w = _rand(g, (n, k), dtype, device, k ** -0.5)
    b = _rand(g, (n,), dtype, device) if bias else None
    out_res = _rand(g, (1, n), dtype, device) if residual else None
    out = torch.full((2, n), float("nan"), dtype=dtype, device=device)
    total = torch.full((1, k), float("nan"), dtype=dtype, device=device)
    kind = {"plain": gemm.PLAIN, "rmsnorm": gemm.NORM, "add_rmsnorm": gemm.ADD_NORM,
            "silu_mul": gemm.SILU_MUL}[prologue]
    gemm.linear_gemv(x, w, b, config=config, out=out[:1], prologue=kind, g=gamma, eps=1e-5,
                     res=res, total=total, out_res=out_res)
    if prologue == "add_rmsnorm":
        a, want_total = _ref("add_rmsnorm", [x[:1], res, gamma], {"eps": 1e-5}, n_out=2)
        assert torch.equal(total.cpu(), want_total), "the residual sum differs from add_rmsnorm's"
    elif prologue == "rmsnorm":
        (a,) = _ref("rmsnorm", [x[:1], gamma], {"eps": 1e-5})
    elif prologue == "silu_mul":
        (a,) = _ref("silu_mul", [x[:1]])
    else:
        a = x[:1]
    (ref,) = _ref("linear", [a, w] + ([b] if bias else []) + ([out_res] if residual else []),
                  {"residual": True} if residual else None)
    assert torch.isnan(out[1:]).all(), "the kernel wrote beyond row 0"
    return rel_err(out[:1], ref)


def check_glu(device, dtype, n, k, seed, config, kernel="gemv", m=1, fp8=False,
              prologue="plain", bias=False, exact=True):
    """A gate/up GEMM's kernel with the SiLU-mul inside (GLU: its epilogue) against the same
    kernel then the SiLU-mul's own (silu_mul_kernel; with `fp8`, FP8 operands and silu_mul_quant's
    fp8_rows_kernel): the elements that differ (none: the same arithmetic). `kernel`: "gemv"
    (one row, after `prologue`) or "small_m" (m rows). Neither writes beyond its rows.
    Not `exact`: rel_err instead (Triton's interpreter multiplies tiles with numpy, whose sums
    may round differently by a column's place in the tile, which GLU changes)."""
    from kiln.builder.kernels import elementwise, gemm, quant
    g = torch.Generator().manual_seed(seed)
    e4m3 = torch.float8_e4m3fn
    if fp8 and prologue == "plain":
        x = (torch.randn((m, k), generator=g) * 40).to(e4m3).to(device)
    else:
        x = _rand(g, (m, k), dtype, device, 2.0 if fp8 else 1.0)
    res = _rand(g, (m, k), dtype, device)
    gamma = _rand(g, (k,), dtype, device, 0.1, 1.0)
    if fp8:
        w = (torch.randn((n, k), generator=g) * 40).to(e4m3).to(device)
        scales = (((torch.rand(1, generator=g) + 0.5) / 40).to(device),
                  ((torch.rand(1, generator=g) + 0.5) / 40 / k ** 0.5).to(device))
        act_scale = torch.tensor([3.0 / 448]).to(device)
    else:
        w = _rand(g, (n, k), dtype, device, k ** -0.5)
        scales = act_scale = None
    b = _rand(g, (n,), dtype, device) if bias else None
    out = torch.full((m + 1, n // 2), float("nan"), dtype=dtype, device=device)
    if fp8:
        out = out.to(e4m3)
    if kernel == "gemv":
        kind = {"plain": gemm.PLAIN, "rmsnorm": gemm.NORM, "add_rmsnorm": gemm.ADD_NORM}[prologue]
        common = dict(config=config, prologue=kind, g=gamma, eps=1e-5, res=res, scales=scales,
                      dtype=dtype)
        y, _ = gemm.linear_gemv(x, w, b, **common)
        gemm.linear_gemv(x, w, b, out=out[:m], glu=True, act_scale=act_scale, **common)
    else:
        y = gemm.linear_small_m(x, w, b, config=config, scales=scales, dtype=dtype)
        gemm.linear_small_m(x, w, b, config=config, out=out[:m], scales=scales, dtype=dtype,
                            glu=True, act_scale=act_scale)
    assert torch.isnan(out[m:].float()).all(), "the kernel wrote beyond its rows"
    ref = quant.silu_mul_quant(y, "float8_e4m3fn", act_scale)[0] if fp8 \
        else elementwise.silu_mul(y)
    return _mismatches(out[:m].cpu(), ref.cpu()) if exact else rel_err(out[:m].float(), ref)


# Cases the CPU interpreter can run in reasonable time: (name, check, kwargs, bound).
def check_gemv_fp8(device, dtype, n, k, seed, config, prologue="fp8", bias=False,
                   residual=False):
    """linear_fp8's one-row alternative (gemv_kernel, SCALED) against ops' FP8 quantization
    `prologue` then linear_fp8: "fp8" (x already quantized), "quantize" (quantize_fp8),
    "rmsnorm", "add_rmsnorm" (*_quant) or "silu_mul" (silu_mul_quant), x the first row of a
    strided view, scales that saturate some values, out poisoned: out's rel_err;
    add_rmsnorm's sum must come out exactly."""
    from kiln.builder.kernels import gemm
    g = torch.Generator().manual_seed(seed)
    fp8 = torch.float8_e4m3fn
    width = 2 * k if prologue == "silu_mul" else k
    wide = _rand(g, (3, width + 24), dtype, device, 2.0)
    x = wide[:, 8:8 + width]
    res = _rand(g, (1, k), dtype, device, 3.0)
    gamma = _rand(g, (k,), dtype, device, 0.2, 1.0)
    w = (torch.randn((n, k), generator=g) * 40).to(fp8).to(device)
    w_scale = ((torch.rand(1, generator=g) + 0.5) / 40 / k ** 0.5).to(device)
    a_scale = torch.tensor([{"rmsnorm": 2.5, "add_rmsnorm": 2.5, "silu_mul": 3.0}.get(
        prologue, 5.0) / 448]).to(device)
    b = [_rand(g, (n,), dtype, device)] if bias else []
    out_res = _rand(g, (1, n), dtype, device) if residual else None
    out = torch.full((2, n), float("nan"), dtype=dtype, device=device)
    total = torch.full((1, k), float("nan"), dtype=dtype, device=device)
    attrs = {"eps": 1e-5, "qdtype": "float8_e4m3fn"}
    if prologue == "fp8":
        (q,) = _ref("quantize_fp8", [x[:1], a_scale])
        gemm.linear_gemv(q.to(device), w, *b, config=config, out=out[:1],
                         scales=(a_scale, w_scale), dtype=dtype, out_res=out_res)
    else:
        kind = {"quantize": gemm.PLAIN, "rmsnorm": gemm.NORM, "add_rmsnorm": gemm.ADD_NORM,
                "silu_mul": gemm.SILU_MUL}[prologue]
        gemm.linear_gemv(x, w, *b, config=config, out=out[:1], prologue=kind, g=gamma,
                         eps=1e-5, res=res, total=total, scales=(a_scale, w_scale),
                         out_res=out_res)
        if prologue == "add_rmsnorm":
            q, want_total = _ref("add_rmsnorm_quant", [x[:1], res, gamma, a_scale], attrs,
                                 n_out=2)
            assert torch.equal(total.cpu(), want_total), "the residual sum differs"
        elif prologue == "rmsnorm":
            (q,) = _ref("rmsnorm_quant", [x[:1], gamma, a_scale], attrs)
        elif prologue == "silu_mul":
            (q,) = _ref("silu_mul_quant", [x[:1], a_scale], attrs)
        else:
            (q,) = _ref("quantize_fp8", [x[:1], a_scale])
    name = str(dtype).split(".")[1]
    extra = ([out_res], {"residual": True}) if residual else ([], {})
    (ref,) = _ref("linear_fp8", [q, w, a_scale, w_scale, *b, *extra[0]], {"dtype": name, **extra[1]})
    assert torch.isnan(out[1:]).all(), "the kernel wrote beyond row 0"
    return rel_err(out[:1], ref)


def check_moe(device, dtype, tokens, hidden, inter, experts, top_k, seed, renormalize=True,
              round_weights=True, act="silu", shared=False, block_m=16, sigmoid=False,
              sparsemixer=False):
    """The MoE launches (kernels/moe.py) against ops.moe. The router's logits are distinct in
    every row (a permutation of evenly spaced values, exact in every dtype), so that the top k
    is one set whatever the softmax's last bits."""
    from kiln.builder.kernels import moe

    gen = torch.Generator().manual_seed(seed)
    x = _rand(gen, (tokens, hidden), dtype, device)
    logits = torch.stack([torch.randperm(experts, generator=gen) for _ in range(tokens)])
    logits = (logits.float() * 0.0625 - 2.0).to(dtype).to(device)
    gate_up = _rand(gen, (experts, 2 * inter, hidden), dtype, device, scale=hidden ** -0.5)
    down = _rand(gen, (experts, hidden, inter), dtype, device, scale=inter ** -0.5)
    extra = ([_rand(gen, (tokens, hidden), dtype, device), _rand(gen, (tokens, 1), dtype, device)]
             if shared else [])
    attrs = dict(top_k=top_k, renormalize=renormalize, round_weights=round_weights, act=act)
    bias = None
    if sigmoid:  # GLM-4.5's: scores plus a correction bias pick, scaled weights
        attrs |= dict(scoring="sigmoid", bias=True, routed_scale=2.5)
        bias = _rand(gen, (experts,), torch.float32, device, 0.3)
    if sparsemixer:  # Phi-3.5-MoE's (top 2): logits close together, so that some are near
        attrs |= dict(scoring="sparsemixer", eps=0.2)
    (ref,) = _ref("moe", [x, logits, gate_up, down, *([bias] if sigmoid else []), *extra], attrs)
    out = moe.moe(x, logits, gate_up, down, attrs, bias, *extra, block_m=block_m)
    return rel_err(out, ref)


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
            cases.append((f"layernorm-{d}-{rows}x{width}", check_layernorm,
                          dict(dtype=dtype, rows=rows, width=width, seed=rows + 2), TOL[dtype]))
        cases += [
            (f"head_rmsnorm-{d}", check_head_rmsnorm,
             dict(dtype=dtype, rows=4, heads=6, head_dim=32, seed=3), TOL[dtype]),
            (f"silu_mul-{d}", check_silu_mul, dict(dtype=dtype, rows=3, width=1500, seed=1), TOL[dtype]),
            (f"gelu_tanh_mul-{d}", check_gelu_tanh_mul, dict(dtype=dtype, rows=3, width=1500, seed=1),
             TOL[dtype]),
            (f"elementwise-{d}", check_elementwise, dict(dtype=dtype, rows=3, width=1100, seed=2), TOL[dtype]),
            (f"gather-{d}", check_gather, dict(dtype=dtype, rows=7, width=300, seed=3), 0.0),
            (f"rope-{d}", check_rope, dict(dtype=dtype, tokens=5, heads=3, head_dim=64, seed=4), TOL[dtype]),
        ]
    for dtype in (f32, f16):
        d = str(dtype).split(".")[1]
        cases += [
            (f"attention-mixed-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[0, 21], q_lens=[19, 5], seed=5), TOL[dtype]),
            (f"attention-decodes-first-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[40, 3, 0, 21, 9],
                  q_lens=[1, 1, 19, 5, 1], seed=12), TOL[dtype]),
            (f"attention-decodes-first-fused-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[40, 3, 0, 21, 9],
                  q_lens=[1, 1, 19, 5, 1], seed=12, fused=True), TOL[dtype]),
            (f"attention-long-prefix-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[100, 0], q_lens=[40, 70],
                  seed=14), TOL[dtype]),
            (f"attention-decode-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[0, 40, 3], q_lens=[1, 1, 1], seed=6), TOL[dtype]),
            (f"attention-decode-fused-{d}", check_attention,
             dict(dtype=dtype, nq=4, nkv=2, head_dim=32, prefixes=[0, 40, 3], q_lens=[1, 1, 1], seed=6,
                  fused=True), TOL[dtype]),
        ]
    cases += [
        # Mixtures of experts: blocks of 16 and 64 slots, experts left without tokens, top_k
        # not a power of two, renormalized or not, the shared expert.
        ("moe-float32", check_moe, dict(dtype=f32, tokens=9, hidden=64, inter=48, experts=8,
                                         top_k=2, seed=30), TOL[f32]),
        ("moe-block64-float32", check_moe,
         dict(dtype=f32, tokens=40, hidden=32, inter=32, experts=6, top_k=3, seed=31,
              renormalize=False, block_m=64), TOL[f32]),
        ("moe-sigmoid-bias-float32", check_moe,
         dict(dtype=f32, tokens=7, hidden=64, inter=32, experts=16, top_k=4, seed=33,
              round_weights=False, sigmoid=True), TOL[f32]),
        ("moe-sparsemixer-float32", check_moe,
         dict(dtype=f32, tokens=6, hidden=64, inter=32, experts=16, top_k=2, seed=34,
              renormalize=False, sparsemixer=True), TOL[f32]),
        ("moe-shared-gelu-float16", check_moe,
         dict(dtype=f16, tokens=5, hidden=96, inter=40, experts=16, top_k=4, seed=32,
              round_weights=False, act="gelu_tanh", shared=True), TOL[f16]),
        ("attention-split3-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5], q_lens=[1, 1], seed=6, num_splits=3), TOL[f32]),
        ("attention-split3-fused-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5], q_lens=[1, 1], seed=6, num_splits=3,
              fused=True), TOL[f32]),
        ("attention-split3-decodes-first-fused-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5, 12], q_lens=[1, 1, 9], seed=6,
              num_splits=3, fused=True), TOL[f32]),
        ("attention-fp8-output-float32", check_attention_fp8_output,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5, 0, 21], q_lens=[1, 1, 19, 5],
              seed=6), 0),
        ("attention-fp8-output-split3-float32", check_attention_fp8_output,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5, 12], q_lens=[1, 1, 9], seed=7,
              num_splits=3), 0),
        ("attention-fp8-output-float16", check_attention_fp8_output,
         dict(dtype=f16, nq=4, nkv=2, head_dim=32, prefixes=[40, 3, 0], q_lens=[1, 1, 19],
              seed=8, num_splits=2), 0),
        ("attention-norope-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=4, head_dim=16, prefixes=[0], q_lens=[9], seed=7, rope_on=False), TOL[f32]),
        # Sliding windows: keys before the window masked in the first tile it touches, and
        # the tiles before it skipped (prefill blocks, decode splits).
        ("attention-window-mixed-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=2, head_dim=32, prefixes=[40, 3, 0, 21, 90],
              q_lens=[1, 1, 100, 5, 1], seed=17, window=37), TOL[f32]),
        ("attention-window-mixed-fused-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=2, head_dim=32, prefixes=[40, 3, 0, 21, 90],
              q_lens=[1, 1, 100, 5, 1], seed=17, window=37, fused=True), TOL[f32]),
        ("attention-window-split3-fused-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[150, 5, 40], q_lens=[1, 1, 1],
              seed=18, num_splits=3, window=70, fused=True), TOL[f32]),
        ("attention-window-mixed-float16", check_attention,
         dict(dtype=f16, nq=4, nkv=2, head_dim=32, prefixes=[90, 0, 21], q_lens=[1, 100, 5],
              seed=19, window=64), TOL[f16]),
        # Gemma 2's capped scores (a small cap, so that the tanh bends), in a window.
        ("attention-softcap-window-fused-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=2, head_dim=32, prefixes=[40, 3, 0, 21, 90],
              q_lens=[1, 1, 100, 5, 1], seed=20, window=37, softcap=0.5, fused=True), TOL[f32]),
        ("attention-softcap-split3-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5], q_lens=[1, 1], seed=21,
              num_splits=3, softcap=0.5), TOL[f32]),
        # A head_dim that is not a power of two (Phi-3's 96): padded to 128 in the kernels.
        ("rope-hd96-float32", check_rope, dict(dtype=f32, tokens=5, heads=3, head_dim=96, seed=4), TOL[f32]),
        ("attention-hd96-decodes-first-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=2, head_dim=96, prefixes=[40, 3, 0, 21], q_lens=[1, 1, 19, 5],
              seed=15), TOL[f32]),
        ("attention-hd96-decodes-first-fused-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=2, head_dim=96, prefixes=[40, 3, 0, 21], q_lens=[1, 1, 19, 5],
              seed=15, fused=True), TOL[f32]),
        ("attention-hd96-split3-fused-float32", check_attention,
         dict(dtype=f32, nq=6, nkv=2, head_dim=96, prefixes=[70, 5], q_lens=[1, 1], seed=16,
              num_splits=3, fused=True), TOL[f32]),
        ("attention-fused-equals-unfused-float32", compare_fused_decode,
         dict(dtype=f32, nq=6, nkv=2, head_dim=16, prefixes=[70, 5, 33], seed=8, num_splits=3), 0),
        ("attention-norope-fused-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=4, head_dim=16, prefixes=[0, 30], q_lens=[1, 1], seed=7, rope_on=False,
              fused=True), TOL[f32]),
        ("attention-norope-decodes-first-fused-float32", check_attention,
         dict(dtype=f32, nq=4, nkv=4, head_dim=16, prefixes=[30, 0], q_lens=[1, 9], seed=7, rope_on=False,
              fused=True), TOL[f32]),
    ]
    # Quantized KV cache. The interpreter's float32 -> fp8 conversion is wrong (a rounding
    # that crosses a power of two is not carried into the exponent), so fp8 cases leave the
    # step's cache write to the reference and the fp8 write is checked on the GPU only.
    fp8, i8 = "float8_e4m3fn", "int8"
    for kv, writes in ((i8, True), (fp8, False)):
        for dtype in (f32, f16):
            d = str(dtype).split(".")[1]
            cases += [
                (f"attention-kv-{kv}-mixed-{d}", check_attention_quant,
                 dict(dtype=dtype, kv_dtype=kv, nq=4, nkv=2, head_dim=32, prefixes=[0, 21],
                      q_lens=[19, 5], seed=10, kernel_writes=writes), TOL[dtype]),
                (f"attention-kv-{kv}-decodes-first-{d}", check_attention_quant,
                 dict(dtype=dtype, kv_dtype=kv, nq=4, nkv=2, head_dim=32, prefixes=[30, 0, 21],
                      q_lens=[1, 19, 5], seed=13, kernel_writes=writes), TOL[dtype]),
                (f"attention-kv-{kv}-split3-{d}", check_attention_quant,
                 dict(dtype=dtype, kv_dtype=kv, nq=6, nkv=2, head_dim=16, prefixes=[70, 5, 0],
                      q_lens=[1, 1, 1], seed=11, num_splits=3, kernel_writes=writes), TOL[dtype]),
                (f"attention-kv-{kv}-split3-fused-{d}", check_attention_quant,
                 dict(dtype=dtype, kv_dtype=kv, nq=6, nkv=2, head_dim=16, prefixes=[70, 5, 0],
                      q_lens=[1, 1, 1], seed=11, num_splits=3, kernel_writes=writes, fused=True),
                 TOL[dtype]),
            ]
        cases.append((f"attention-kv-{kv}-norope-float32", check_attention_quant,
                      dict(dtype=f32, kv_dtype=kv, nq=4, nkv=4, head_dim=16, prefixes=[3],
                           q_lens=[9], seed=12, rope_on=False, kernel_writes=writes), TOL[f32]))
    cases += [
        ("kv_write-int8-float32", check_kv_write,
         dict(dtype=f32, kv_dtype=i8, tokens=9, nkv=2, head_dim=32, seed=13), 0),
        ("kv_write-int8-float16", check_kv_write,
         dict(dtype=f16, kv_dtype=i8, tokens=9, nkv=2, head_dim=32, seed=14), 0),
        ("greedy", check_greedy, dict(rows=3, vocab=5000, seed=8), 0),
        ("greedy-split3", check_greedy, dict(rows=3, vocab=5000, seed=8, chunks=3), 0),
        ("greedy-split64", check_greedy, dict(rows=2, vocab=9000, seed=9, chunks=64), 0),
        ("greedy-bf16", check_greedy, dict(rows=3, vocab=5000, seed=8, chunks=3,
                                           dtype=torch.bfloat16), 0),
    ]
    # The interpreter cannot multiply bfloat16 matrices: bfloat16 is checked on the GPU.
    for dtype in (f32, f16):
        d = str(dtype).split(".")[1]
        for m, n, k, config, bias in [(1, 64, 256, 0, False), (5, 50, 72, 1, True),
                                      (16, 96, 512, 0, True), (3, 40, 300, 1, False),
                                      (1, 64, 256, 4, False), (7, 100, 200, 4, True)]:
            cases.append((f"small_m_gemm-{d}-{m}x{n}x{k}-c{config}", check_small_m_gemm,
                          dict(dtype=dtype, m=m, n=n, k=k, seed=m + n, config=config, bias=bias),
                          TOL[dtype]))
        # A linear with a residual (passes/fold_residual_into_linears.py): the plain and the
        # SWAP forms, and the one-row kernel after each of its prologues.
        for m, n, k, config, bias in [(5, 50, 72, 1, True), (7, 100, 200, 4, False)]:
            cases.append((f"small_m_gemm_residual-{d}-{m}x{n}x{k}-c{config}", check_small_m_gemm,
                          dict(dtype=dtype, m=m, n=n, k=k, seed=m + n, config=config, bias=bias,
                               residual=True), TOL[dtype]))
        for name, check, prologues in [("gemv", check_gemv, ("plain", "rmsnorm", "silu_mul")),
                                       ("gemv_fp8", check_gemv_fp8, ("fp8", "rmsnorm"))]:
            for prologue in prologues:
                cases.append((f"{name}_residual-{d}-{prologue}", check,
                              dict(dtype=dtype, n=48, k=256, seed=7, config=0, prologue=prologue,
                                   bias=prologue == "plain", residual=True), TOL[dtype]))
        shared = [(64, 256, 0, "add_rmsnorm", False), (50, 72, 1, "rmsnorm", True),
                  (96, 1100, 2, "silu_mul", False)]
        for name, check, extra in [
                ("gemv", check_gemv, [(40, 300, 0, "plain", True)]),
                ("gemv_fp8", check_gemv_fp8, [(40, 300, 2, "quantize", True),
                                              (48, 512, 0, "fp8", False)])]:
            for n, k, config, prologue, bias in shared + extra:
                cases.append((f"{name}-{d}-{n}x{k}-c{config}-{prologue}", check,
                              dict(dtype=dtype, n=n, k=k, seed=n + k, config=config,
                                   prologue=prologue, bias=bias), TOL[dtype]))
        for fp8 in (False, True):
            f = "-fp8" if fp8 else ""
            for n, k, config, prologue, bias in [(64, 256, 0, "add_rmsnorm", False),
                                                 (36, 72, 1, "rmsnorm", True),
                                                 (44, 300, 2, "plain", False)]:
                cases.append((f"gemv_glu{f}-{d}-{n}x{k}-c{config}-{prologue}", check_glu,
                              dict(dtype=dtype, n=n, k=k, seed=n + k, config=config, fp8=fp8,
                                   prologue=prologue, bias=bias), 0))
            for m, n, k, config, bias in [(1, 64, 256, 0, False), (5, 100, 72, 1, True),
                                          (16, 96, 512, 2, False), (3, 200, 128, 4, False)]:
                cases.append((f"small_m_glu{f}-{d}-{m}x{n}x{k}-c{config}", check_glu,
                              dict(dtype=dtype, n=n, k=k, seed=m + n, config=config,
                                   kernel="small_m", m=m, fp8=fp8, bias=bias, exact=fp8),
                              0 if fp8 else TOL[dtype]))
    cases += [
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
