"""Every Triton kernel against its torch reference on the GPU, fp32/fp16/bf16, several shapes."""
import pytest
import torch

import kernel_checks as kc
from kiln.builder.kernels.gemm import GEMV_CONFIGS, GEMV_CONFIGS_FP8, SMALL_CONFIGS

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROW_SHAPES = [(1, 576), (7, 2048), (300, 4096), (33, 5120), (4, 8192)]
# (num_heads, num_kv_heads, head_dim): Llama-3-8B, Qwen2.5-7B, SmolLM2, MHA, Qwen3-like GQA 8
HEADS = [(32, 8, 128), (28, 4, 128), (9, 3, 64), (16, 16, 64), (16, 2, 128)]


@pytest.fixture(autouse=True)
def on_gpu(sm):
    torch.manual_seed(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", ROW_SHAPES)
def test_rmsnorm_and_add_rmsnorm(dtype, rows, width):
    assert kc.check_rmsnorm("cuda", dtype, rows, width, seed=rows) < kc.TOL[dtype]
    assert kc.check_add_rmsnorm("cuda", dtype, rows, width, seed=rows + 1) < kc.TOL[dtype]
    assert kc.check_layernorm("cuda", dtype, rows, width, seed=rows + 2) < kc.TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,block_m", [(1, 16), (7, 16), (100, 64), (300, 64)])
@pytest.mark.parametrize("shape", ["qwen3-30b-a3b", "mixtral-shared", "glm-sigmoid",
                                   "phi-sparsemixer"])
def test_moe(dtype, tokens, block_m, shape):
    """Qwen3-30B-A3B's experts (8 of 128, 768 wide, hidden 2048); Mixtral's routing (2 of 8,
    weights in float32) with a shared expert, narrower; GLM-4.5's sigmoid routing with its
    correction bias (8 of 64 here); Phi-3.5-MoE's sparsemixer (2 of 16, narrower)."""
    if shape == "qwen3-30b-a3b":
        kw = dict(hidden=2048, inter=768, experts=128, top_k=8)
    elif shape == "glm-sigmoid":
        kw = dict(hidden=2048, inter=512, experts=64, top_k=8, round_weights=False, sigmoid=True)
    elif shape == "phi-sparsemixer":
        kw = dict(hidden=1024, inter=1600, experts=16, top_k=2, renormalize=False,
                  sparsemixer=True)
    else:
        kw = dict(hidden=1024, inter=2816, experts=8, top_k=2, round_weights=False, shared=True)
    assert kc.check_moe("cuda", dtype, tokens, seed=tokens, block_m=block_m, **kw) < kc.TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(32, 128), (8, 128), (14, 64)])
def test_head_rmsnorm(dtype, heads, head_dim):
    assert kc.check_head_rmsnorm("cuda", dtype, 37, heads, head_dim, seed=heads) < kc.TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(1, 14336), (65, 8960), (300, 1536)])
def test_silu_mul_and_elementwise(dtype, rows, width):
    assert kc.check_silu_mul("cuda", dtype, rows, width, seed=rows) < kc.TOL[dtype]
    assert kc.check_gelu_tanh_mul("cuda", dtype, rows, width, seed=rows) < kc.TOL[dtype]
    assert kc.check_elementwise("cuda", dtype, rows, width, seed=rows + 2) < kc.TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(32768, 4096), (49152, 576)])
def test_embedding_and_gather_last_are_exact(dtype, rows, width):
    assert kc.check_gather("cuda", dtype, rows, width, seed=1) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(32, 128), (9, 64)])
def test_rope_llama3_at_large_positions(dtype, heads, head_dim):
    assert kc.check_rope("cuda", dtype, 300, heads, head_dim, seed=heads) < kc.TOL[dtype]


SCENARIOS = {
    "prefill": ([0, 0], [200, 77]),
    "chunked+decode": ([0, 96, 513, 40], [150, 37, 1, 1]),
    "decodes+chunked": ([513, 40, 2999, 0, 96, 7], [1, 1, 1, 150, 37, 1]),
    "decode": ([0, 17, 900, 2999, 64], [1, 1, 1, 1, 1]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nq,nkv,hd", HEADS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_attention(dtype, nq, nkv, hd, scenario):
    prefixes, q_lens = SCENARIOS[scenario]
    out, cache = kc.check_attention("cuda", dtype, nq, nkv, hd, prefixes, q_lens, seed=nq + hd,
                                    tokens_per_block=32)
    assert out < kc.TOL[dtype], f"attention error {out}"
    assert cache < kc.TOL[dtype], f"cache error {cache}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("splits", [2, 7, 32])
@pytest.mark.parametrize("tokens_per_block", [16, 64])
@pytest.mark.parametrize("fused", [False, True])
def test_split_kv_decode(dtype, splits, tokens_per_block, fused):
    out, _ = kc.check_attention("cuda", dtype, 32, 8, 128, [4000, 129, 5], [1, 1, 1], seed=splits,
                                tokens_per_block=tokens_per_block, num_splits=splits, fused=fused)
    assert out < kc.TOL[dtype]


@pytest.mark.parametrize("kv_dtype", [None, "float8_e4m3fn", "int8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 3, 32])
def test_decode_with_rope_inside_equals_rope_kv_first(kv_dtype, dtype, splits, sm):
    """The plan's decode (RoPE and the KV write inside the decode kernel) against rope_kv_kernel
    then the decode kernel: the same output and cache, bit for bit."""
    if kv_dtype == "float8_e4m3fn" and sm < 89:
        pytest.skip(f"an fp8 KV cache needs SM 89 or newer, this GPU is SM {sm}")
    if kv_dtype and dtype == torch.float32:
        pytest.skip("quantized caches are for 16-bit builds here")
    assert kc.compare_fused_decode("cuda", dtype, 32, 8, 128, [4000, 129, 5, 0, 63], seed=splits,
                                   num_splits=splits, kv_dtype=kv_dtype) == (0, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 3, 32])
def test_attention_writes_its_output_as_fp8(dtype, splits):
    """An FP8 engine's attention writes the o-projection's e4m3 input itself (decode kernel,
    split-KV reduce and flash kernel): the codes pack.to_fp8 gives for the 16-bit output."""
    assert kc.check_attention_fp8_output("cuda", dtype, 32, 8, 128, [4000, 129, 5, 0, 63],
                                         [1, 1, 1, 37, 1], seed=splits, num_splits=splits) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("fused", [False, True])
def test_attention_in_a_sliding_window(dtype, splits, fused):
    """Mistral-7B-v0.1's window (4,096) and a shorter one, over prompt chunks and decodes
    whose context runs past it; head_dim 96 (Phi-3's) in the second; Gemma 2's shape (head_dim
    256) with its scores softcapped (a cap small enough to bend them) in the third."""
    for nq, nkv, hd, window, softcap in ((32, 8, 128, 4096, 0.0), (32, 32, 96, 1000, 0.0),
                                         (16, 8, 256, 4096, 0.5)):
        out, cache = kc.check_attention("cuda", dtype, nq, nkv, hd, [5000, 129, 3000, 0],
                                        [1, 1, 300, 1200], seed=splits, tokens_per_block=32,
                                        num_splits=splits, fused=fused, window=window,
                                        softcap=softcap)
        assert out < kc.TOL[dtype] and cache < kc.TOL[dtype], (hd, window, out, cache)


def test_attention_without_rope():
    out, cache = kc.check_attention("cuda", torch.bfloat16, 16, 4, 64, [10, 0], [30, 5], seed=3,
                                    rope_on=False)
    assert out < kc.TOL[torch.bfloat16] and cache == 0.0


KV_DTYPES = ["float8_e4m3fn", "int8"]
KV_SCENARIOS = {
    "prefill": ([0, 0], [200, 77]),
    "chunked+decode": ([0, 96, 513, 1900], [150, 37, 1, 1]),
    "decode": ([0, 17, 900, 2047, 64], [1, 1, 1, 1, 1]),
}


@pytest.fixture
def kv_dtype(request, sm):
    if request.param == "float8_e4m3fn" and sm < 89:
        pytest.skip(f"an fp8 KV cache needs SM 89 or newer, this GPU is SM {sm}")
    return request.param


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, indirect=True)
@pytest.mark.parametrize("nq,nkv,hd", [(32, 8, 128), (28, 4, 128), (9, 3, 64)])
@pytest.mark.parametrize("scenario", list(KV_SCENARIOS))
def test_attention_quantized_kv_cache(kv_dtype, nq, nkv, hd, scenario):
    prefixes, q_lens = KV_SCENARIOS[scenario]
    out, bad_k, bad_v = kc.check_attention_quant("cuda", torch.bfloat16, kv_dtype, nq, nkv, hd,
                                                 prefixes, q_lens, seed=nq + hd,
                                                 tokens_per_block=32)
    assert out < kc.TOL[torch.bfloat16], f"attention error {out}"
    assert (bad_k, bad_v) == (0, 0)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, indirect=True)
@pytest.mark.parametrize("splits", [1, 2, 7, 32])
@pytest.mark.parametrize("tokens_per_block", [16, 64])
@pytest.mark.parametrize("fused", [False, True])
def test_split_kv_decode_quantized(kv_dtype, splits, tokens_per_block, fused):
    out, bad_k, bad_v = kc.check_attention_quant("cuda", torch.bfloat16, kv_dtype, 32, 8, 128,
                                                 [2000, 129, 5], [1, 1, 1], seed=splits,
                                                 tokens_per_block=tokens_per_block,
                                                 num_splits=splits, fused=fused)
    assert out < kc.TOL[torch.bfloat16] and (bad_k, bad_v) == (0, 0)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rope_on", [True, False])
def test_attention_quantized_kv_cache_other_dtypes(kv_dtype, dtype, rope_on):
    out, bad_k, bad_v = kc.check_attention_quant("cuda", dtype, kv_dtype, 32, 8, 128,
                                                 [0, 300, 1500], [120, 1, 40], seed=5,
                                                 tokens_per_block=32, rope_on=rope_on)
    assert out < kc.TOL[dtype] and (bad_k, bad_v) == (0, 0)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_write_matches_quantize_kv_exactly(kv_dtype, dtype):
    """Ties, saturation, zeros and tiny values: round to nearest even as quantize_kv does."""
    assert kc.check_kv_write("cuda", dtype, kv_dtype, 300, 8, 128, seed=3) == 0


@pytest.mark.parametrize("rows,vocab", [(1, 128256), (9, 151936), (3, 320)])
@pytest.mark.parametrize("chunks", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_torch_argmax(rows, vocab, chunks, dtype):
    assert kc.check_greedy("cuda", rows, vocab, seed=rows, chunks=chunks, dtype=dtype) == 0


@pytest.mark.parametrize("vocab", [320, 32768])
def test_sampling_stays_in_the_filtered_set(vocab):
    assert kc.check_sampling("cuda", vocab, seed=vocab, draws=64) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (1000, 576), (50, 72)])
@pytest.mark.parametrize("config", range(len(SMALL_CONFIGS)))
def test_small_m_gemm(dtype, m, n, k, config):
    err = kc.check_small_m_gemm("cuda", dtype, m, n, k, seed=m + n, config=config, bias=n == 1000)
    assert err < kc.TOL[dtype], f"error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,prologue", [(6144, 4096, "add_rmsnorm"), (4096, 4096, "plain"),
                                          (28672, 4096, "rmsnorm"), (4096, 14336, "silu_mul"),
                                          (1000, 576, "add_rmsnorm"), (50, 72, "silu_mul")])
@pytest.mark.parametrize("config", range(len(GEMV_CONFIGS)))
def test_gemv(dtype, n, k, prologue, config):
    err = kc.check_gemv("cuda", dtype, n, k, seed=n + k, config=config, prologue=prologue,
                        bias=n == 1000)
    assert err < kc.TOL[dtype], f"error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(4096, 4096), (4096, 14336), (50, 72)])
def test_gemm_adds_its_residual(dtype, n, k):
    """A linear with a residual (passes/fold_residual_into_linears.py: the o and down
    projections) through every small-M configuration at 7 and 16 rows and every one-row one
    after each of its prologues: the product rounded, then the residual added, as ops' linear
    with `residual` computes it."""
    for m in (7, 16):
        for config in range(len(SMALL_CONFIGS)):
            err = kc.check_small_m_gemm("cuda", dtype, m, n, k, seed=m + n, config=config,
                                        bias=n == 50, residual=True)
            assert err < kc.TOL[dtype], f"small-M {m} rows, config {config}: error {err:.2e}"
    for prologue in ("plain", "rmsnorm", "silu_mul"):
        for config in range(len(GEMV_CONFIGS)):
            err = kc.check_gemv("cuda", dtype, n, k, seed=n + k, config=config, prologue=prologue,
                                bias=n == 50, residual=True)
            assert err < kc.TOL[dtype], f"one-row {prologue}, config {config}: error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,prologue", [(28672, 4096, "add_rmsnorm"), (28672, 4096, "plain"),
                                          (1000, 576, "rmsnorm"), (36, 72, "plain")])
@pytest.mark.parametrize("fp8,config", [(False, c) for c in range(len(GEMV_CONFIGS))]
                         + [(True, c) for c in range(len(GEMV_CONFIGS_FP8))],
                         ids=lambda v: "fp8" if v is True else "" if v is False else str(v))
def test_gemv_glu_equals_gemv_then_silu_mul(dtype, fp8, n, k, prologue, config):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    assert kc.check_glu("cuda", dtype, n, k, seed=n + k, config=config, fp8=fp8,
                        prologue=prologue, bias=n == 1000) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fp8", [False, True], ids=["", "fp8"])
@pytest.mark.parametrize("m,n,k", [(1, 28672, 4096), (8, 28672, 4096), (5, 1000, 72)])
@pytest.mark.parametrize("config", range(len(SMALL_CONFIGS)))
def test_small_m_glu_equals_small_m_then_silu_mul(dtype, fp8, m, n, k, config):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    assert kc.check_glu("cuda", dtype, n, k, seed=m + n, config=config, kernel="small_m", m=m,
                        fp8=fp8, bias=n == 1000) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,prologue", [(6144, 4096, "add_rmsnorm"), (4096, 4096, "quantize"),
                                          (28672, 4096, "add_rmsnorm"), (4096, 14336, "silu_mul"),
                                          (1000, 576, "rmsnorm"), (50, 72, "fp8"),
                                          (6144, 4096, "fp8"), (4096, 14336, "fp8"),
                                          (1000, 576, "fp8")])
@pytest.mark.parametrize("config", range(len(GEMV_CONFIGS_FP8)))
def test_gemv_fp8(dtype, n, k, prologue, config):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    err = kc.check_gemv_fp8("cuda", dtype, n, k, seed=n + k, config=config, prologue=prologue,
                            bias=n == 1000)
    assert err < kc.TOL[dtype], f"error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,prologue", [(4096, 4096, "fp8"), (4096, 14336, "silu_mul"),
                                          (50, 72, "rmsnorm")])
def test_gemv_fp8_adds_its_residual(dtype, n, k, prologue):
    """linear_fp8 with a residual (the FP8 o and down projections) through every one-row
    configuration: the scaled product rounded, then the residual added."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89 or newer (Ada, Hopper)")
    for config in range(len(GEMV_CONFIGS_FP8)):
        err = kc.check_gemv_fp8("cuda", dtype, n, k, seed=n + k, config=config,
                                prologue=prologue, bias=n == 50, residual=True)
        assert err < kc.TOL[dtype], f"config {config}: error {err:.2e}"
