"""engine-bench datasets: length distributions, text prompts, JSON lines, and `prepare`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from kiln.builder.errors import KilnError
from kiln.runtime.bench.cli import bench_main
from kiln.runtime.bench.dataset import (BenchRequest, DatasetStats, LengthDist, check_fits,
                                        from_lines, from_text, read_jsonl, synthetic, write_jsonl)

TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
        "\n"
        "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.\n"
        "A wizard's job is to vex chumps quickly in fog.\n")


def test_fixed_lengths_are_exact():
    reqs = synthetic(50, LengthDist(128), LengthDist(7), vocab_size=1000, seed=1)
    assert [r.input_len for r in reqs] == [128] * 50
    assert [r.output_tokens for r in reqs] == [7] * 50
    assert [r.task_id for r in reqs] == list(range(50))
    ids = np.concatenate([r.input_ids for r in reqs])
    assert ids.min() >= 0 and ids.max() < 1000 and len(np.unique(ids)) > 900


def test_normal_lengths_have_the_asked_mean_and_stdev():
    reqs = synthetic(4000, LengthDist(300, 40), LengthDist(100, 25), vocab_size=50, seed=7)
    stats = DatasetStats.of(reqs)
    # 4000 draws: the sample mean is within 3 standard errors (40 / sqrt(4000) * 3 = 1.9).
    assert abs(stats.input_len.mean - 300) < 1.9 and abs(stats.output_len.mean - 100) < 1.2
    assert abs(stats.input_len.stdev - 40) < 1.5 and abs(stats.output_len.stdev - 25) < 1.0
    assert stats.num_requests == 4000
    assert stats.total_input_tokens == sum(r.input_len for r in reqs)
    assert stats.input_len.min == min(r.input_len for r in reqs)


def test_lengths_are_clipped_to_one():
    lens = LengthDist(2, 10).sample(2000, np.random.default_rng(0))
    assert min(lens) == 1 and max(lens) > 10
    assert sum(1 for n in lens if n == 1) > 500  # everything the normal puts below 1.5


def test_seeded_and_reproducible():
    a = synthetic(20, LengthDist(30, 5), LengthDist(10, 3), vocab_size=500, seed=3)
    b = synthetic(20, LengthDist(30, 5), LengthDist(10, 3), vocab_size=500, seed=3)
    c = synthetic(20, LengthDist(30, 5), LengthDist(10, 3), vocab_size=500, seed=4)
    assert a == b and a != c


def test_bad_distributions_are_refused():
    with pytest.raises(KilnError, match="mean length must be at least 1"):
        LengthDist(0.5)
    with pytest.raises(KilnError, match="stdev must be 0 or more"):
        LengthDist(10, -1)
    with pytest.raises(KilnError, match="--num-requests must be at least 1"):
        synthetic(0, LengthDist(1), LengthDist(1), 10)


def test_prompts_from_text_are_windows_of_the_token_stream():
    encode = lambda s: [ord(ch) for ch in s]  # noqa: E731 - a character "tokenizer"
    stream = encode(TEXT)
    reqs = from_text(TEXT, encode, 30, LengthDist(40, 10), LengthDist(5), seed=2)
    doubled = stream * 2
    for r in reqs:
        n = r.input_len
        assert any(doubled[s: s + n] == r.input_ids for s in range(len(stream))), r.task_id
    assert len({r.input_len for r in reqs}) > 5 and all(r.output_tokens == 5 for r in reqs)
    # Prompts longer than the text wrap around it.
    long = from_text(TEXT, encode, 2, LengthDist(3 * len(stream)), LengthDist(1), seed=0)
    assert all(r.input_len == 3 * len(stream) for r in long)
    assert from_text(TEXT, encode, 30, LengthDist(40, 10), LengthDist(5), seed=2) == reqs


def test_prompts_from_lines():
    encode = lambda s: [ord(ch) for ch in s]  # noqa: E731
    reqs = from_lines(TEXT, encode, 5, LengthDist(9), seed=0)
    lines = [line for line in TEXT.splitlines() if line.strip()]
    assert [r.input_ids for r in reqs] == [encode(lines[i % 3]) for i in range(5)]
    with pytest.raises(KilnError, match="no non-empty lines"):
        from_lines("\n \n", encode, 5, LengthDist(9))


def test_jsonl_round_trip_and_refusals(tmp_path):
    reqs = synthetic(5, LengthDist(4, 2), LengthDist(3, 1), vocab_size=100, seed=0)
    path = tmp_path / "d.jsonl"
    write_jsonl(path, reqs)
    assert read_jsonl(path) == reqs
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"task_id", "input_ids", "output_tokens"}
    path.write_text('{"input_ids": [1, 2], "output_tokens": 3}\n\n{"input_ids": [1], "output_tokens": 0}\n')
    with pytest.raises(KilnError, match=r"d.jsonl:3: input_ids must be a non-empty list"):
        read_jsonl(path)
    path.write_text('{"input_ids": [1, 2], "output_tokens": 3}\nnot json\n')
    with pytest.raises(KilnError, match=r"d.jsonl:2 is not a JSON object with input_ids"):
        read_jsonl(path)
    with pytest.raises(KilnError, match="does not exist; make one with `engine-bench prepare`"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_check_fits():
    check_fits([BenchRequest(0, [1] * 60, 68)], max_seq_len=128, vocab_size=2)
    with pytest.raises(KilnError, match="request 3 needs 60 \\+ 69 tokens, more than the engine's max_seq_len 128"):
        check_fits([BenchRequest(3, [1] * 60, 69)], max_seq_len=128, vocab_size=2)
    with pytest.raises(KilnError, match="token id 9, outside the engine's vocabulary of 9"):
        check_fits([BenchRequest(0, [9], 1)], max_seq_len=128, vocab_size=9)


def test_prepare_token_norm_dist_cli(tiny_engine, tmp_path):
    _, engine = tiny_engine("llama")
    out = tmp_path / "data" / "d.jsonl"  # the folder is made
    args = ["prepare", "--output", str(out), "--seed", "5", "token-norm-dist", "--num-requests", "40",
            "--input-mean", "20", "--input-stdev", "4", "--output-mean", "6", "--engine", str(engine)]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    assert "dataset: 40 requests · input" in result.stderr
    reqs = read_jsonl(out)
    assert reqs == synthetic(40, LengthDist(20, 4), LengthDist(6), vocab_size=320, seed=5)
    to_stdout = CliRunner().invoke(bench_main, ["prepare", "token-norm-dist", "--num-requests", "2",
                                                "--input-mean", "3", "--output-mean", "2",
                                                "--vocab-size", "10"])
    assert [json.loads(line)["output_tokens"] for line in to_stdout.stdout.splitlines()] == [2, 2]
    bad = CliRunner().invoke(bench_main, ["prepare", "token-norm-dist", "--num-requests", "2",
                                          "--input-mean", "3", "--output-mean", "2"])
    assert bad.exit_code == 1 and bad.stderr.strip() == "error: pass exactly one of --engine DIR and --vocab-size N"
    to_folder = CliRunner().invoke(bench_main, ["prepare", "--output", str(tmp_path), "token-norm-dist",
                                                "--num-requests", "2", "--input-mean", "3",
                                                "--output-mean", "2", "--vocab-size", "10"])
    assert to_folder.exit_code == 1
    assert to_folder.stderr.strip() == (f"error: --output {tmp_path}: cannot write it (Is a directory); "
                                        "choose another path")


def test_prepare_text_cli_uses_the_engines_tokenizer(tiny_engine, tmp_path):
    from transformers import AutoTokenizer

    _, engine = tiny_engine("llama")
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "d.jsonl"
    result = CliRunner().invoke(bench_main, ["prepare", "-o", str(out), "text", str(text_file),
                                             "--engine", str(engine), "--num-requests", "6",
                                             "--input-mean", "12", "--output-mean", "4"])
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(engine / "tokenizer")
    stream = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert read_jsonl(out) == from_text(TEXT, lambda s: stream, 6, LengthDist(12), LengthDist(4), seed=0)
    lines = CliRunner().invoke(bench_main, ["prepare", "-o", str(out), "text", str(text_file),
                                            "--tokenizer", str(engine / "tokenizer"), "--lines",
                                            "--num-requests", "3", "--output-mean", "4"])
    assert lines.exit_code == 0, lines.output
    assert [r.input_ids for r in read_jsonl(out)][0] == tok(TEXT.splitlines()[0])["input_ids"]
