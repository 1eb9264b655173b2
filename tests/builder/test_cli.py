"""engine-build and engine-inspect: the summary, and a one-line error for each bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kiln.builder.cli import build_main, inspect_main
from kiln.builder.engine import RANK_FILE, load_engine
from kiln_testing import make_tiny_checkpoint, make_tiny_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("cli") / "hf")


@pytest.fixture
def broken(ckpt, tmp_path):
    """A writable copy of the checkpoint to damage."""
    dst = tmp_path / "hf"
    shutil.copytree(ckpt, dst)
    return dst


def build(*args):
    return CliRunner().invoke(build_main, [str(a) for a in args] + ["--quiet"])


def assert_one_line_error(result, pattern):
    import re

    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


def test_build_summary_and_inspect(ckpt, tmp_path):
    out = tmp_path / "engine"
    result = build("--checkpoint", ckpt, "--output", out, "--dtype", "float16",
                   "--max-seq-len", "128", "--max-num-tokens", "64")
    assert result.exit_code == 0, result.output
    assert "LlamaForCausalLM" in result.stdout and "parameters" in result.stdout
    assert "phases" in result.stdout and "write weights" in result.stdout
    shown = CliRunner().invoke(inspect_main, [str(out)])
    assert shown.exit_code == 0, shown.output
    for text in ("max_seq_len: 128", "residual adds inside the GEMM before them: 4",
                 "q/k/v projections into one GEMM: 2",
                 "RoPE folded into attention's KV write: 2",
                 "gate/up projections + SiLU-and-multiply: 2", "memory plan: activation arena",
                 "64 tokens x 64 sequences"):
        assert text in shown.stdout, text


def test_output_exists_without_overwrite(ckpt, tmp_path):
    out = tmp_path / "engine"
    out.mkdir()
    assert_one_line_error(build("--checkpoint", ckpt, "--output", out, "--max-seq-len", "64"),
                          "output directory .* exists; pass --overwrite to replace it")
    result = build("--checkpoint", ckpt, "--output", out, "--max-seq-len", "64", "--overwrite")
    assert result.exit_code == 0 and (out / RANK_FILE).is_file()


def test_output_that_cannot_be_created(ckpt, tmp_path):
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(build("--checkpoint", ckpt, "--output", tmp_path / "a-file" / "engine"),
                          "cannot create the output directory .*a-file/engine: Not a directory; "
                          "pass --output a path in a directory you can write to")


def test_disk_full_while_writing(ckpt, tmp_path, monkeypatch):
    """A full disk is said in one line, and the half-written engine is removed."""
    import errno
    import os

    import kiln.builder.build as build_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(build_module, "write_rank_file", full)
    out = tmp_path / "engine"
    assert_one_line_error(build("--checkpoint", ckpt, "--output", out, "--max-seq-len", "64"),
                          "writing the engine to .*engine failed: No space left on device; free "
                          "space there or pass --output another disk")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(build("--checkpoint", tmp_path / "nope", "--output", tmp_path / "e"),
                          "checkpoint path .*nope does not exist")


def test_missing_weights_file(broken, tmp_path):
    (broken / "model.safetensors").unlink()
    assert_one_line_error(build("--checkpoint", broken, "--output", tmp_path / "e"),
                          "no weight")


def test_truncated_weights_file(broken, tmp_path):
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_one_line_error(build("--checkpoint", broken, "--output", tmp_path / "e"), "truncated")


def test_unsupported_architecture(broken, tmp_path):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (broken / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(build("--checkpoint", broken, "--output", tmp_path / "e"),
                          "'GPT2LMHeadModel' is not supported; supported: LlamaForCausalLM, "
                          "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM")


def test_foreign_model_is_refused_by_its_architecture_not_its_tensors(tmp_path):
    """A GPT-2 checkpoint has none of the Llama tensor names: the refusal names the
    architecture, not the tensors it lacks."""
    import transformers

    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(gpt2)
    make_tiny_tokenizer(gpt2)
    assert_one_line_error(build("--checkpoint", gpt2, "--output", tmp_path / "e"),
                          "architecture 'GPT2LMHeadModel' is not supported; supported: "
                          "LlamaForCausalLM")


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_mlp_activation_other_than_silu_or_gelu_tanh_is_refused(broken, tmp_path, act):
    """Kiln's MLP is silu(gate) * up or gelu_tanh(gate) * up: another hidden_act would build
    and silently compute something else (erf GELU is not its tanh form)."""
    cfg = json.loads((broken / "config.json").read_text())
    cfg["hidden_act"] = act
    (broken / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(build("--checkpoint", broken, "--output", tmp_path / "e"),
                          f"config.json: hidden_act '{act}' is not supported; Kiln runs "
                          r"LlamaForCausalLM's MLP as act\(gate\) \* up with hidden_act 'silu' "
                          r"or 'swish' or 'gelu_pytorch_tanh' or 'gelu_tanh'")


def test_tensor_shape_mismatch(broken, tmp_path):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(build("--checkpoint", broken, "--output", tmp_path / "e"),
                          r"tensor layers.0.gate.weight has shape \[128, 64\] but config.json "
                          r"implies \[96, 64\]")


def test_max_seq_len_beyond_model(ckpt, tmp_path):
    assert_one_line_error(build("--checkpoint", ckpt, "--output", tmp_path / "e",
                                "--max-seq-len", "100000"),
                          "--max-seq-len 100000 exceeds what the model supports \\(256 positions\\)")
    assert not (tmp_path / "e").exists()


def test_bfloat16_for_a_gpu_without_it_is_refused(ckpt, tmp_path):
    """SM 75 (Turing) has no bfloat16 arithmetic: a bfloat16 engine for it is refused by name;
    float16 builds for it."""
    assert_one_line_error(build("--checkpoint", ckpt, "--output", tmp_path / "e", "--dtype",
                                "bfloat16", "--target-sm", "75", "--target-sm", "90"),
                          "--dtype bfloat16 needs SM 80 or newer, but --target-sm includes 75; "
                          "use --dtype float16")
    assert not (tmp_path / "e").exists()


@pytest.fixture
def engine_copy(ckpt, tmp_path):
    out = tmp_path / "engine"
    assert build("--checkpoint", ckpt, "--output", out, "--max-seq-len", "64").exit_code == 0
    return out


def test_inspect_refuses_truncated_and_bit_flipped(engine_copy):
    rank = engine_copy / RANK_FILE
    offset = load_engine(engine_copy).rank_file.header["weights"]["lm_head.weight"]["offset"]
    data = bytearray(rank.read_bytes())
    data[offset + 10] ^= 0xFF
    rank.write_bytes(bytes(data))
    assert_one_line_error(CliRunner().invoke(inspect_main, [str(engine_copy)]), "checksum mismatch")
    rank.write_bytes(bytes(data[:-4096]))
    assert_one_line_error(CliRunner().invoke(inspect_main, [str(engine_copy)]), "truncated")


def test_inspect_refuses_wrong_format_version(engine_copy):
    cfg = json.loads((engine_copy / "config.json").read_text())
    cfg["format_version"] = 0
    (engine_copy / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(CliRunner().invoke(inspect_main, [str(engine_copy)]),
                          "engine format version 0, this Kiln reads version 3; rebuild it")


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kiln.builder", "--checkpoint",
                           str(tmp_path / "missing"), "--output", str(tmp_path / "e")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: checkpoint path") and "Traceback" not in proc.stderr
