"""engine-bench build: engine limits sized from a dataset's lengths and the GPU's memory."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kiln.builder.errors import KilnError
from kiln.builder.models import ModelConfig
from kiln.builder.random_weights import RandomCheckpoint
from kiln.runtime.bench.cli import bench_main
from kiln.runtime.bench.dataset import LengthDist, synthetic, write_jsonl
from kiln.runtime.bench.tuning import (GIB, MAX_BATCH, MAX_TOKENS, MIN_TOKENS, engine_settings,
                                       kv_bytes_per_token, weight_bytes)


@pytest.fixture(scope="module")
def llama8b():
    return ModelConfig.from_hf(RandomCheckpoint("llama-3.1-8b").hf_config)


def settings(model, memory_gib, isl, osl, quant="none", kv="auto", **kw):
    return engine_settings(model, dtype="bfloat16", quant=quant, kv_cache_dtype=kv,
                           gpu_memory=memory_gib * GIB, input_len=isl, output_len=osl,
                           max_len=isl + osl, **kw)


def test_bytes_of_the_8b_shape(llama8b):
    assert weight_bytes(llama8b, "bfloat16", "none") == 2 * llama8b.num_params()
    # FP8: linear layers at one byte, the embedding and the LM head (2 x 525 M) at two.
    fp8 = weight_bytes(llama8b, "bfloat16", "fp8")
    tables = 2 * llama8b.vocab_size * llama8b.hidden_size
    assert fp8 == pytest.approx(llama8b.num_params() + tables, rel=1e-4)
    assert kv_bytes_per_token(llama8b, "bfloat16", "auto") == 2 * 32 * 8 * 128 * 2
    assert kv_bytes_per_token(llama8b, "bfloat16", "fp8") == 2 * 32 * 8 * 128


def test_batch_is_what_the_cache_holds(llama8b):
    s = settings(llama8b, 80, 128, 128)
    # ~(80 * 0.95 - 15 GiB) * 0.9 of 128 KiB tokens, 256 tokens a request.
    expected = ((80 * 0.95 * GIB - s.weight_bytes) * 0.9) / (128 << 10) / 256
    assert s.requests_in_cache == pytest.approx(expected)
    assert s.max_batch_size % 32 == 0
    assert expected <= s.max_batch_size < expected + 32
    assert s.max_num_tokens == MIN_TOKENS and s.max_seq_len == 256
    # Longer requests: fewer at once; an FP8 cache and weights: more.
    long = settings(llama8b, 80, 2048, 2048)
    assert long.max_batch_size < s.max_batch_size and long.max_seq_len == 4096
    fp8 = settings(llama8b, 80, 2048, 2048, quant="fp8", kv="fp8")
    assert fp8.requests_in_cache > 2 * long.requests_in_cache


def test_tokens_keep_the_batch_full_within_bounds(llama8b):
    # 2048/128 with an FP8 cache on 141 GiB: ~830 requests, each step decodes them all and
    # prefills the 2048-token prompts of the ~830 / 128 that finish.
    s = settings(llama8b, 141, 2048, 128, quant="fp8", kv="fp8")
    want = s.max_batch_size * (1 + 2048 / 128)
    assert s.max_num_tokens == min(MAX_TOKENS, -(-want // 1024) * 1024)
    huge = settings(llama8b, 4000, 64, 64, quant="fp8", kv="fp8")
    assert huge.max_batch_size == MAX_BATCH and huge.max_num_tokens >= MAX_BATCH
    # A batch given keeps itself full: 512 x (1 + 16) = 8,704 tokens, in steps of 1,024.
    given = settings(llama8b, 141, 2048, 128, max_batch_size=512)
    assert (given.max_batch_size, given.max_num_tokens) == (512, 9216)


def test_a_run_in_waves_makes_them_equal(llama8b):
    # 2048/2048 with an FP8 cache on 141 GiB: ~450 requests fit; filling them takes ~113 steps
    # of 8,192 tokens against 2,048 decode steps, so 500 requests run as two waves of 250, not
    # one of ~450 and one of ~50.
    s = settings(llama8b, 141, 2048, 2048, quant="fp8", kv="fp8")
    holds = int(s.requests_in_cache)
    assert 400 < holds < 500
    assert s.run_batch(500) == 250
    assert s.run_batch(3 * holds + 1) == -(-(3 * holds + 1) // 4)
    # Within what the cache holds: the engine's batch, which does not bind.
    assert s.run_batch(holds) == s.max_batch_size
    # Long prompts, short outputs: filling the batch (~400 x 2048 / 8192 steps) takes longer than
    # half the 128 decode steps, requests come and go throughout, and the cache's batch stands.
    flow = settings(llama8b, 141, 2048, 128)
    assert flow.run_batch(1000) == flow.max_batch_size
    # Outputs of spread lengths finish throughout too.
    spread = settings(llama8b, 141, 2048, 2048, quant="fp8", kv="fp8", output_spread=0.5)
    assert spread.run_batch(500) == spread.max_batch_size


def test_errors_say_what_to_change(llama8b):
    with pytest.raises(KilnError, match="leave no memory for a KV cache.*--quant"):
        settings(llama8b, 12, 128, 128)
    with pytest.raises(KilnError, match="holds no request"):
        settings(llama8b, 16.0, 2048, 2048)
    with pytest.raises(KilnError, match="exceeds the model's 131072 positions"):
        engine_settings(llama8b, dtype="bfloat16", quant="none", kv_cache_dtype="auto",
                        gpu_memory=80 * GIB, input_len=1000, output_len=10, max_len=200_000)
    with pytest.raises(KilnError, match="fraction"):
        settings(llama8b, 80, 128, 128, kv_fraction=1.5)


def invoke(*args):
    return CliRunner().invoke(bench_main, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tuning") / "d.jsonl"
    write_jsonl(path, synthetic(20, LengthDist(24, 4), LengthDist(8, 2), vocab_size=320, seed=1))
    return path


def test_print_only_names_the_sizes_and_keeps_what_was_given(dataset, tmp_path):
    result = invoke("build", "--dataset", dataset, "--gpu-memory-gib", 80, "--print-only",
                    "--random-weights", "llama-3.1-8b", "--dtype", "bfloat16",
                    "--output", tmp_path / "e", "--max-num-tokens", 4096)
    assert result.exit_code == 0, result.output
    line = next(s for s in result.output.splitlines() if s.startswith("engine-build "))
    assert "--max-num-tokens 4096" in line and line.count("--max-num-tokens") == 1
    assert "--max-batch-size" in line and "--max-seq-len" in line
    assert not (tmp_path / "e").exists()
    result = invoke("build", "--dataset", dataset, "--gpu-memory-gib", 80, "--print-only",
                    "--random-weights", "llama-3.1-8b", "--output", tmp_path / "e",
                    "--max-batch-size", 2048)
    line = next(s for s in result.output.splitlines() if s.startswith("engine-build "))
    # The given batch is the one kept full: 2,048 x (1 + input / output), the dataset's means.
    lengths = [json.loads(row) for row in dataset.read_text().splitlines()]
    ratio = sum(len(r["input_ids"]) for r in lengths) / sum(r["output_tokens"] for r in lengths)
    tokens = -(-2048 * (1 + ratio) // 1024) * 1024
    assert line.count("--max-batch-size") == 1 and f"--max-num-tokens {int(tokens)}" in line


def test_builds_an_engine_with_the_sizes(tiny_engine, dataset, tmp_path):
    ckpt, _ = tiny_engine("llama")
    out = tmp_path / "engine"
    result = invoke("build", "--dataset", dataset, "--gpu-memory-gib", 0.01,
                    "--checkpoint", ckpt, "--dtype", "float32", "--output", out,
                    "--target-sm", 90, "--quiet")
    assert result.exit_code == 0, result.output
    build = json.loads((out / "config.json").read_text())["build"]
    model = ModelConfig.from_hf(json.loads((ckpt / "config.json").read_text()))
    lengths = [json.loads(line) for line in dataset.read_text().splitlines()]
    want = engine_settings(
        model, dtype="float32", quant="none", kv_cache_dtype="auto", gpu_memory=0.01 * GIB,
        input_len=sum(len(r["input_ids"]) for r in lengths) / len(lengths),
        output_len=sum(r["output_tokens"] for r in lengths) / len(lengths),
        max_len=max(len(r["input_ids"]) + r["output_tokens"] for r in lengths))
    assert (build["max_batch_size"], build["max_num_tokens"], build["max_seq_len"]) == (
        want.max_batch_size, want.max_num_tokens, want.max_seq_len)


def test_several_datasets_take_the_largest_limits(tmp_path, dataset):
    long = tmp_path / "long.jsonl"
    write_jsonl(long, synthetic(5, LengthDist(900, 0), LengthDist(100, 0), vocab_size=320, seed=2))
    result = invoke("build", "--dataset", dataset, "--dataset", long, "--gpu-memory-gib", 80,
                    "--print-only", "--random-weights", "llama-3.1-8b", "--dtype", "bfloat16",
                    "--output", tmp_path / "e")
    assert result.exit_code == 0, result.output
    batches = [int(line.split(" -> max batch ")[1].split(",")[0])
               for line in result.output.splitlines() if line.startswith("sizing ")]
    line = next(s for s in result.output.splitlines() if s.startswith("engine-build "))
    assert len(batches) == 2 and batches[0] > batches[1]  # short requests: more at once
    assert f"--max-batch-size {batches[0]}" in line and "--max-seq-len 1024" in line
    # Each sizing line ends with the batch its dataset's run is capped at.
    runs = [line.rsplit(" run at batch ", 1)[1] for line in result.output.splitlines()
            if line.startswith("sizing ")]
    assert runs == [str(batches[0]), str(batches[1])]


@pytest.mark.parametrize("args, message", [
    (["--gpu-memory-gib", 80, "--output", "x"], "--checkpoint PATH or --random-weights NAME"),
    (["--gpu-memory-gib", -1, "--random-weights", "llama-3.1-8b", "--output", "x"],
     "--gpu-memory-gib must be positive"),
    (["--gpu-memory-gib", 80, "--random-weights", "llama-3.1-8b", "--output", "x",
      "--max-batch-size", 0], "--max-batch-size must be at least 1, got 0"),
    (["--gpu-memory-gib", 80, "--random-weights", "llama-3.1-8b", "--output", "x",
      "--max-seq-len", -3], "--max-seq-len must be at least 1, got -3"),
])
def test_bad_input_is_one_line(dataset, args, message):
    result = invoke("build", "--dataset", dataset, "--print-only", *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_missing_dataset_is_one_line(tmp_path):
    result = invoke("build", "--dataset", tmp_path / "none.jsonl", "--random-weights",
                    "llama-3.1-8b", "--output", "x")
    assert result.exit_code == 1 and "write one with `engine-bench prepare`" in result.output
