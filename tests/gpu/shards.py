"""The GPU check's shards: scripts/gpu_check.sh runs each as its own pytest process, all at once
(the kernel tests spend most of their time compiling on the CPU, one core a process). Each shard
is a list of pytest arguments; together they select every `-m gpu` test exactly once, which
tests/gpu/test_shards.py checks on the CPU.

    python tests/gpu/shards.py          the shards' names, one a line
    python tests/gpu/shards.py NAME     that shard's pytest arguments, on one line

Nine shards took 537 s on a 16-core H200 host (2026-12-04), the longest (the attention tests)
501 s; the large ones are split by test function. The check is bound by the host's cores:
fourteen at once took ~470 s there, and with the ~100-s speed check more than a ten-minute
device call, which then runs them in two calls (KILN_GPU_CHECK_SHARDS in scripts/gpu_check.sh).
The engines of the tiny families (three dtypes each, kernels compiled anew on a fresh host)
are split by family into three shards.
`--deselect` takes node-id prefixes: deselecting `test_attention` deselects every test whose
name starts so.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kiln_testing import TINY_ARCHS  # noqa: E402

K = "tests/gpu/test_kernels.py"
Q = "tests/gpu/test_quant_kernels.py"
WO = "tests/gpu/test_wo_kernels.py"
ENGINES = ("tests/gpu/test_engines.py", "tests/gpu/test_quant_engines.py")
# The attention tests of test_kernels.py, in two shards (76 and 109 tests today).
ATTENTION_A = ("test_attention", "test_attention_without_rope",
               "test_kv_write_matches_quantize_kv_exactly",
               "test_attention_writes_its_output_as_fp8")
ATTENTION_B = ("test_split_kv_decode", "test_split_kv_decode_quantized",
               "test_decode_with_rope_inside_equals_rope_kv_first",
               "test_attention_quantized_kv_cache",
               "test_attention_quantized_kv_cache_other_dtypes",
               "test_attention_in_a_sliding_window")
# Names (prefixes) the "kernels" shard leaves to the shards above and below.
KERNELS_ELSEWHERE = ("test_attention", "test_split_kv_decode", "test_decode_with_rope",
                     "test_kv_write", "test_gemv_glu", "test_small_m_glu", "test_small_m_gemm")


def _tests(path: str, names) -> list[str]:
    return [f"{path}::{name}" for name in names]


def _deselect(path: str, prefixes) -> list[str]:
    return [arg for prefix in prefixes for arg in ("--deselect", f"{path}::{prefix}")]


SHARDS: dict[str, list[str]] = {
    "attention_a": _tests(K, ATTENTION_A),
    "attention_b": _tests(K, ATTENTION_B),
    "small_m": _tests(K, ["test_small_m_gemm"]),
    "kernels": [K, *_deselect(K, KERNELS_ELSEWHERE)],
    "gemv_glu": _tests(K, ["test_gemv_glu_equals_gemv_then_silu_mul"]),
    "small_m_glu": _tests(K, ["test_small_m_glu_equals_small_m_then_silu_mul"]),
    "fp8_small_m": _tests(Q, ["test_linear_fp8_small_m"]),
    "quant_kernels": [Q, *_deselect(Q, ["test_linear_fp8_small_m"])],
    "wo_paths": _tests(WO, ["test_linear_wo_4096", "test_linear_wo_gemv_configs",
                            "test_dequantize_is_exact"]),
    "wo_mma": _tests(WO, ["test_linear_wo_mma"]),
    "wo_shapes": _tests(WO, ["test_linear_wo_mma_row_blocks",
                             "test_linear_wo_mma_counts_return_to_zero",
                             "test_linear_wo_splits_and_odd_shapes",
                             "test_wo_mma_glu_equals_wo_mma_then_silu_mul"]),
    # Every tiny family's engine in each dtype, in three shards of families (each family's
    # 16-bit checks reuse its float32 engine, built once a shard); the other engine tests.
    **{f"families_{part}": [f"{ENGINES[0]}::test_engine_matches_reference_backend[{arch}-{dtype}]"
                            for arch in TINY_ARCHS[i::3]
                            for dtype in ("float32", "bfloat16", "float16")]
       for i, part in enumerate("abc")},
    "engines": [ENGINES[0], *_deselect(ENGINES[0], ["test_engine_matches_reference_backend"])],
    "quant_engines": [ENGINES[1]],
    "rest": ["tests/gpu", "tests/quantize/test_gpu.py",
             *(f"--ignore={path}" for path in (K, Q, WO, *ENGINES))],
}


def main(argv: list[str]) -> None:
    if not argv:
        print("\n".join(SHARDS))
    elif argv[0] in SHARDS:
        print(" ".join(SHARDS[argv[0]]))
    else:
        sys.exit(f"no GPU-check shard {argv[0]!r}; the shards: {', '.join(SHARDS)}")


if __name__ == "__main__":
    main(sys.argv[1:])
