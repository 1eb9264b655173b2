"""QuantMode: flags from quant_mode.json, validated combinations, the generated C++ header
agreeing with Python, and BuildConfig refusing what a target cannot run."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.builder.errors import KilnError
from kiln.builder.models import BuildConfig
from kiln.quantize import header
from kiln.quantize.mode import (KV_CACHE_NAMES, QUANT_NAMES, QuantMode, describe, min_sm,
                                problems, quant_mode)

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "csrc" / "runtime" / "quant_mode.h"


def test_named_modes():
    assert QUANT_NAMES == ("none", "fp8", "int8_sq", "int8_wo", "int4_awq", "int4_gptq")
    assert KV_CACHE_NAMES == ("auto", "fp8", "int8")
    assert int(quant_mode("none", "auto")) == 0
    assert quant_mode("fp8", "auto") == QuantMode.FP8_QDQ
    assert quant_mode("int8_sq", "int8") == (QuantMode.INT8_WEIGHTS | QuantMode.INT8_ACTIVATIONS
                                              | QuantMode.PER_CHANNEL | QuantMode.PER_TOKEN
                                              | QuantMode.INT8_KV_CACHE)
    assert int(quant_mode("int4_awq", "fp8")) == (1 << 0) | (1 << 5) | (1 << 8)
    assert describe(quant_mode("int8_wo", "auto")) == "INT8_WEIGHTS|PER_CHANNEL"


def test_invalid_combinations_and_min_sm():
    assert problems(QuantMode.INT4_WEIGHTS | QuantMode.INT8_WEIGHTS | QuantMode.PER_GROUP
                    | QuantMode.PER_CHANNEL) == [
        "INT4_WEIGHTS and INT8_WEIGHTS exclude each other",
        "PER_CHANNEL and PER_GROUP exclude each other"]
    assert problems(QuantMode.INT8_ACTIVATIONS) == ["INT8_ACTIVATIONS needs INT8_WEIGHTS, PER_TOKEN"]
    assert problems(QuantMode.INT4_WEIGHTS) == ["INT4_WEIGHTS needs PER_GROUP"]
    assert problems(QuantMode.FP8_KV_CACHE | QuantMode.INT8_KV_CACHE) == [
        "INT8_KV_CACHE and FP8_KV_CACHE exclude each other"]
    assert min_sm(quant_mode("fp8", "auto")) == 89
    assert min_sm(quant_mode("int4_awq", "fp8")) == 89
    assert min_sm(quant_mode("int8_sq", "int8")) == 0
    for name in QUANT_NAMES:
        for kv in KV_CACHE_NAMES:
            assert problems(quant_mode(name, kv)) == []


@pytest.mark.parametrize("quant, kv, message", [
    ("int3", "auto", r"--quant int3 is not a quantization mode; use one of none, fp8, int8_sq"),
    ("fp8", "fp16", r"--kv-cache-dtype fp16 is not supported; use one of auto, fp8, int8"),
])
def test_unknown_names_refused(quant, kv, message):
    with pytest.raises(KilnError, match=message):
        quant_mode(quant, kv)


def test_build_config_refuses_old_targets_for_fp8():
    with pytest.raises(KilnError, match=r"^--quant fp8 needs SM 89 or newer, but --target-sm "
                                        r"includes 80, 86; drop those targets"):
        BuildConfig(quant="fp8", targets=[80, 86, 90])
    with pytest.raises(KilnError, match=r"^--kv-cache-dtype fp8 needs SM 89 or newer"):
        BuildConfig(quant="int4_awq", kv_cache_dtype="fp8", targets=[80])
    assert BuildConfig(quant="int8_sq", kv_cache_dtype="int8", targets=[80]).quant_mode == 0b10011110
    assert BuildConfig(quant="fp8", kv_cache_dtype="fp8", targets=[89, 90]).quant_mode == 0b101000000


def test_build_config_records_the_mode():
    build = BuildConfig(quant="int4_gptq", kv_cache_dtype="int8", targets=[80, 90])
    data = json.loads(json.dumps(build.to_json()))
    assert {k: data[k] for k in ("quant", "kv_cache_dtype", "quant_mode")} == {
        "quant": "int4_gptq", "kv_cache_dtype": "int8", "quant_mode": 0b10100001}
    assert "calibrator" not in data
    assert BuildConfig.from_json(data) == build
    assert build.kv_dtype == "int8" and BuildConfig(dtype="bfloat16").kv_dtype == "bfloat16"
    with pytest.raises(KilnError, match=r"build.quant_mode 1 does not match --quant int4_gptq"):
        BuildConfig.from_json(dict(data, quant_mode=1))


def test_header_is_generated_from_the_json():
    assert HEADER.read_text() == header.render(), (
        "csrc/runtime/quant_mode.h is stale: run python -m kiln.quantize.header > "
        "csrc/runtime/quant_mode.h")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the header")
def test_cpp_header_agrees_with_python(tmp_path):
    names = [f"\"{n}\"" for n in QUANT_NAMES] + ["\"int3\""]
    kvs = [f"\"{n}\"" for n in KV_CACHE_NAMES] + ["\"fp16\""]
    program = f"""
#include "runtime/quant_mode.h"
#include <cstdio>
int main()
{{
    for (std::uint32_t f = 0; f < 512; ++f)
        std::printf("%u %d %d\\n", f, kiln::isValidQuantMode(f), kiln::minSmOf(f));
    for (char const* n : {{{", ".join(names)}}})
    {{
        std::uint32_t f = 99;
        bool ok = kiln::quantModeOf(n, f);
        std::printf("mode %s %d %u\\n", n, ok, ok ? f : 0u);
    }}
    for (char const* n : {{{", ".join(kvs)}}})
    {{
        std::uint32_t f = 99;
        bool ok = kiln::kvCacheModeOf(n, f);
        std::printf("kv %s %d %u\\n", n, ok, ok ? f : 0u);
    }}
}}
"""
    (tmp_path / "check.cpp").write_text(program)
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}",
                    str(tmp_path / "check.cpp"), "-o", str(tmp_path / "check")], check=True)
    lines = subprocess.run([str(tmp_path / "check")], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    expected = [f"{f} {int(not problems(QuantMode(f)))} {min_sm(QuantMode(f))}" for f in range(512)]
    expected += [f"mode {n} 1 {int(quant_mode(n, 'auto'))}" for n in QUANT_NAMES] + ["mode int3 0 0"]
    expected += [f"kv {n} 1 {int(quant_mode('none', n))}" for n in KV_CACHE_NAMES] + ["kv fp16 0 0"]
    assert lines == expected
    valid = sum(1 for f in range(512) if not problems(QuantMode(f)))
    assert valid == len({int(quant_mode(q, kv)) for q, kv in itertools.product(QUANT_NAMES, KV_CACHE_NAMES)})
