"""Engine format v1: round trip, and refusal of every kind of damaged engine."""
from __future__ import annotations

import json
import shutil
import re
import struct

import pytest
import torch

from kiln.builder.build import build_engine
from kiln.builder.checkpoint import open_checkpoint
from kiln.builder.engine import RANK_FILE, load_engine
from kiln.builder.engine.format import ALIGN, MAGIC, PREAMBLE
from kiln.builder.errors import KilnError
from kiln.builder.models import BuildConfig
from kiln_testing import make_tiny_checkpoint

BUILD = BuildConfig(dtype="bfloat16", max_batch_size=4, max_seq_len=64, max_num_tokens=32,
                    tokens_per_block=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    ckpt = make_tiny_checkpoint("qwen2", root / "hf")
    build_engine(ckpt, root / "engine", BUILD, progress=False)
    return ckpt, root / "engine"


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(built[1], dst)
    return dst


def test_round_trip(built):
    ckpt_dir, engine_dir = built
    engine = load_engine(engine_dir)
    assert engine.config.build == BUILD
    assert sorted(p.name for p in engine_dir.iterdir()) == ["config.json", RANK_FILE, "tokenizer"]
    assert (engine_dir / "tokenizer" / "tokenizer.json").is_file()
    with open_checkpoint(ckpt_dir) as ckpt:
        qkv = torch.cat([ckpt.load(f"layers.1.{p}.weight", torch.bfloat16) for p in "qkv"])
        assert torch.equal(engine.weights["layers.1.qkv.weight"], qkv)
        bias = torch.cat([ckpt.load(f"layers.0.{p}.bias", torch.bfloat16) for p in "qkv"])
        assert torch.equal(engine.weights["layers.0.qkv.bias"], bias)
        assert torch.equal(engine.weights["final_norm.weight"],
                           ckpt.load("final_norm.weight", torch.bfloat16))
    assert engine.graph.memory_plan["symbols"] == {"T": 32, "B": 4, "MAXBLK": 8}
    engine.graph.verify()
    for entry in engine.rank_file.header["weights"].values():
        assert entry["offset"] % ALIGN == 0


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_truncated_file_refused(copy):
    rank = copy / RANK_FILE
    rank.write_bytes(rank.read_bytes()[:-300])
    with pytest.raises(KilnError, match=r"rank0.engine is \d+ bytes, expected \d+: the file is truncated"):
        load_engine(copy)


def test_bit_flip_in_weights_refused(copy):
    header = load_engine(copy).rank_file.header
    entry = header["weights"]["layers.1.down.weight"]
    _flip(copy / RANK_FILE, entry["offset"] + 17)
    with pytest.raises(KilnError, match="checksum mismatch in layers.1.down.weight: the file is corrupted"):
        load_engine(copy)


@pytest.mark.parametrize("threads", [1, 3, 64])
def test_blob_checks_name_the_first_corrupted_blob_on_any_number_of_threads(copy, threads):
    """verify_blobs checks the largest blobs first, on several threads; the error still names
    the first corrupted blob in file order, and an intact file passes."""
    rank = load_engine(copy).rank_file
    rank.verify_blobs(threads)
    weights = rank.header["weights"]
    ordered = sorted(weights, key=lambda name: weights[name]["offset"])
    largest = max(ordered, key=lambda name: weights[name]["nbytes"])
    other = ordered[-1] if ordered[-1] != largest else ordered[0]
    for name in (largest, other):
        _flip(copy / RANK_FILE, weights[name]["offset"] + weights[name]["nbytes"] - 1)
    first = min(largest, other, key=lambda name: weights[name]["offset"])
    with pytest.raises(KilnError, match=f"checksum mismatch in {re.escape(first)}:"):
        load_engine(copy, verify=False).rank_file.verify_blobs(threads)


def test_bit_flip_in_header_refused(copy):
    _flip(copy / RANK_FILE, PREAMBLE.size + 40)
    with pytest.raises(KilnError, match="header checksum .* expected .*: the file is corrupted"):
        load_engine(copy)


def test_wrong_magic_refused(copy):
    _flip(copy / RANK_FILE, 2)
    with pytest.raises(KilnError, match="expected magic"):
        load_engine(copy)


def test_wrong_version_in_rank_file_refused(copy):
    rank = copy / RANK_FILE
    data = bytearray(rank.read_bytes())
    struct.pack_into("<I", data, len(MAGIC), 7)
    rank.write_bytes(bytes(data))
    with pytest.raises(KilnError, match="engine format version 7, this Kiln reads version 3"):
        load_engine(copy)


def test_wrong_version_in_config_refused(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["format_version"] = 4
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KilnError, match="config.json: engine format version 4, this Kiln reads version 3"):
        load_engine(copy)


def test_missing_pieces_refused(copy, tmp_path):
    with pytest.raises(KilnError, match="does not exist; build one with engine-build"):
        load_engine(tmp_path / "nowhere")
    (copy / RANK_FILE).unlink()
    with pytest.raises(KilnError, match="rank0.engine is missing"):
        load_engine(copy)
    (copy / "config.json").unlink()
    with pytest.raises(KilnError, match="config.json is missing"):
        load_engine(copy)


def test_a_weight_that_fails_to_load_fails_the_write(built, tmp_path):
    """Weights are written and checksummed on other threads while the next is made: an error
    making one still comes out of the writer, after the writes already queued."""
    from kiln.builder.engine.writer import KernelBundle, write_rank_file

    ckpt_dir, _ = built
    from kiln.builder.models import ModelConfig, build_graph
    from kiln.builder.passes import run_pipeline

    with open_checkpoint(ckpt_dir) as ckpt:
        graph = run_pipeline(build_graph(ModelConfig.from_hf(ckpt.hf_config), BUILD, ckpt), BUILD)
        names = [n for n, v in graph.values.items() if v.kind == "weight"]
        written = []

        class Failing:
            def load(self, dtype):
                raise OSError("the checkpoint shard is unreadable")

        graph.sources[names[5]] = Failing()
        with pytest.raises(OSError, match="unreadable"):
            write_rank_file(tmp_path / RANK_FILE, graph, KernelBundle(), "bfloat16",
                            on_weight=lambda name, nbytes: written.append(name))
    assert written == names[: len(written)] and len(written) <= 5
