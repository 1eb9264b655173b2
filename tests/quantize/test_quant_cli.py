"""engine-build's quantization flags, and a one-line error for each bad input."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from kiln.builder.cli import build_main, inspect_main
from kiln_testing import make_tiny_checkpoint
from prequant import write_int4_checkpoint

SMALL = ["--dtype", "float32", "--max-seq-len", "64", "--max-num-tokens", "32",
         "--max-batch-size", "4", "--tokens-per-block", "8", "--quiet"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("qcli") / "hf")


def build(*args):
    return CliRunner().invoke(build_main, [str(a) for a in args] + SMALL)


def assert_one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_quantized_build_and_inspect(ckpt, tmp_path):
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    out = tmp_path / "engine"
    result = build("--checkpoint", ckpt, "--output", out, "--quant", "int8_sq",
                   "--kv-cache-dtype", "int8", "--calib-size", "4", "--calib-seq-len", "32")
    assert result.exit_code == 0, result.output
    assert "(float32, int8_sq, int8 KV cache)" in result.stdout
    assert re.search(r"passes \d+\.\d+s, calibrate \d+\.\d+s", result.stdout), result.stdout
    config = json.loads((out / "config.json").read_text())["build"]
    assert (config["quant"], config["kv_cache_dtype"], config["quant_mode"], config["targets"]) == (
        "int8_sq", "int8", 158, [80, 89, 90])
    shown = CliRunner().invoke(inspect_main, [str(out)])
    assert shown.exit_code == 0, shown.output
    for text in ("quant: int8_sq", "kv_cache_dtype: int8", "quant_mode: 158", "linear_w8a8",
                 "rmsnorm_quant"):
        assert text in shown.stdout, text


def test_fp8_defaults_to_targets_that_run_it(ckpt, tmp_path):
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    result = build("--checkpoint", ckpt, "--output", tmp_path / "e", "--quant", "fp8",
                   "--calib-size", "2", "--calib-seq-len", "16")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "config.json").read_text())["build"]["targets"] == [89, 90]
    shown = CliRunner().invoke(inspect_main, [str(tmp_path / "e")])
    # The tiny model's 2 layers: the last one's o-projection reads gathered last tokens.
    assert "FP8 quantization of the output in attention: 1" in shown.stdout, shown.stdout


@pytest.mark.parametrize("args, pattern", [
    (["--quant", "int3"], r"--quant int3 is not a quantization mode; use one of none, fp8, "
                          r"int8_sq, int8_wo, int4_awq, int4_gptq$"),
    (["--kv-cache-dtype", "fp16"], r"--kv-cache-dtype fp16 is not supported; use one of auto, fp8, int8$"),
    (["--quant", "fp8", "--target-sm", "80", "--target-sm", "90"],
     r"--quant fp8 needs SM 89 or newer, but --target-sm includes 80; drop those targets"),
    (["--kv-cache-dtype", "fp8", "--target-sm", "86"],
     r"--kv-cache-dtype fp8 needs SM 89 or newer, but --target-sm includes 86"),
    (["--quant", "int8_wo", "--calib-size", "0"], r"--calib-size must be at least 1, got 0$"),
    (["--quant", "int4_awq", "--quant-group-size", "48"],
     r"--quant-group-size 48 is not supported; use 32, 64 or 128$"),
    (["--quant", "fp8", "--quant-group-size", "64"],
     r"--quant-group-size applies to --quant int4_awq and int4_gptq only; drop it for --quant "
     r"fp8$"),
    (["--quant-group-size", "64"], r"--quant-group-size applies to --quant int4_awq and "
                                   r"int4_gptq only; drop it for --quant none$"),
])
def test_bad_modes(ckpt, tmp_path, args, pattern):
    assert_one_line_error(build("--checkpoint", ckpt, "--output", tmp_path / "e", *args), pattern)
    assert not (tmp_path / "e").exists()


def test_bad_calibration_text(ckpt, tmp_path):
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    out = tmp_path / "e"
    assert_one_line_error(
        build("--checkpoint", ckpt, "--output", out, "--quant", "int8_wo",
              "--calib-dataset", tmp_path / "missing.txt"),
        r"--calib-dataset .*missing.txt does not exist; pass a UTF-8 text or .jsonl file")
    short = tmp_path / "short.txt"
    short.write_text("Too short to calibrate on.")
    assert_one_line_error(
        build("--checkpoint", ckpt, "--output", out, "--quant", "int8_wo", "--calib-dataset", short,
              "--calib-size", "4", "--calib-seq-len", "32"),
        r"calibration text .*short.txt has \d+ tokens, too short for --calib-size 4 x "
        r"--calib-seq-len 32 = 128; pass a longer --calib-dataset")
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"text": "fine"}\n[1, 2]\n')
    assert_one_line_error(
        build("--checkpoint", ckpt, "--output", out, "--quant", "int8_wo", "--calib-dataset", lines),
        r"bad.jsonl line 2 is not a JSON object with a \"text\" field")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert_one_line_error(
        build("--checkpoint", ckpt, "--output", out, "--quant", "int8_wo", "--calib-dataset", binary),
        r"bin.txt is not UTF-8 text")
    assert_one_line_error(
        build("--checkpoint", ckpt, "--output", out, "--quant", "int8_wo", "--calib-seq-len", "512"),
        r"--calib-seq-len 512 exceeds the model's 256 positions; lower it")
    assert not out.exists()


def test_int4_group_size_from_the_command_line(ckpt, tmp_path):
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    out = tmp_path / "e"
    result = build("--checkpoint", ckpt, "--output", out, "--quant", "int4_awq",
                   "--quant-group-size", "32", "--calib-size", "2", "--calib-seq-len", "16")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["build"]["quant_group_size"] == 32
    assert_one_line_error(
        build("--checkpoint", ckpt, "--output", tmp_path / "e2", "--quant", "int4_gptq",
              "--quant-group-size", "128", "--calib-size", "2", "--calib-seq-len", "16"),
        r"--quant-group-size 128 does not divide K=64 of layers\.0\.qkv\.weight; use 64 or 32 "
        r"for this model$")
    assert not (tmp_path / "e2").exists()


def test_prequantized_checkpoints_from_the_command_line(tmp_path):
    pre, _ = write_int4_checkpoint("llama", tmp_path, "gptq", group=32, symmetric=True)
    result = build("--checkpoint", pre, "--output", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "int4_gptq" in result.stdout
    assert build("--checkpoint", pre, "--output", tmp_path / "e1", "--quant-group-size", "32",
                 "--overwrite").exit_code == 0
    assert_one_line_error(build("--checkpoint", pre, "--output", tmp_path / "e4",
                                "--quant-group-size", "64"),
                          r"--quant-group-size 64 does not fit the checkpoint, which has groups "
                          r"of 32; leave --quant-group-size out$")
    assert_one_line_error(build("--checkpoint", pre, "--output", tmp_path / "e2", "--quant", "fp8"),
                          r"the checkpoint is pre-quantized as int4_gptq \(gptq\); build it with "
                          r"--quant int4_gptq or leave --quant out")
    config = json.loads((pre / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (pre / "config.json").write_text(json.dumps(config))
    assert_one_line_error(build("--checkpoint", pre, "--output", tmp_path / "e3"),
                          r"is a pre-quantized checkpoint \(compressed-tensors\), a format Kiln "
                          r"does not read")
