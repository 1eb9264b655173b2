"""QuantMode: one flag type for what an engine's weights, activations and KV cache hold.

The flags, the named modes (`--quant`), the KV cache options (`--kv-cache-dtype`), the valid
combinations and the oldest GPU each flag runs on are data in quant_mode.json, read here and
compiled into csrc/runtime/quant_mode.h, so Python and C++ agree by construction. The int4
modes' group sizes (`--quant-group-size`) are checked here too; each GEMM's own group is an
attr of its linear_wo node, not a flag.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path

from kiln.builder.errors import KilnError

SPEC: dict = json.loads((Path(__file__).parent / "quant_mode.json").read_text())

QUANT_NAMES: tuple[str, ...] = tuple(SPEC["modes"])
KV_CACHE_NAMES: tuple[str, ...] = tuple(SPEC["kv_cache"])

QuantMode = enum.IntFlag("QuantMode", {name: 1 << f["bit"] for name, f in SPEC["flags"].items()})
QuantMode.__doc__ = "quant_mode.json's flags; config.json records them as build.quant_mode."


def _flags(names: list[str]) -> QuantMode:
    mode = QuantMode(0)
    for name in names:
        mode |= QuantMode[name]
    return mode


def problems(mode: QuantMode) -> list[str]:
    """Why a combination of flags is invalid (empty when it is valid)."""
    found = []
    for group in SPEC["exclusive"]:
        present = [name for name in group if mode & QuantMode[name]]
        if len(present) > 1:
            found.append(f"{' and '.join(present)} exclude each other")
    for name, needs in SPEC["requires"].items():
        if mode & QuantMode[name]:
            missing = [n for n in needs if not mode & QuantMode[n]]
            if missing:
                found.append(f"{name} needs {', '.join(missing)}")
    return found


def min_sm(mode: QuantMode) -> int:
    """The oldest SM architecture whose kernels can run `mode` (0: any)."""
    return max([sm for name, sm in SPEC["min_sm"].items() if mode & QuantMode[name]], default=0)


def quant_mode(quant: str, kv_cache_dtype: str) -> QuantMode:
    """The flags of `--quant quant --kv-cache-dtype kv_cache_dtype`, or a KilnError."""
    if quant not in SPEC["modes"]:
        raise KilnError(f"--quant {quant} is not a quantization mode; use one of "
                        f"{', '.join(QUANT_NAMES)}")
    if kv_cache_dtype not in SPEC["kv_cache"]:
        raise KilnError(f"--kv-cache-dtype {kv_cache_dtype} is not supported; use one of "
                        f"{', '.join(KV_CACHE_NAMES)}")
    mode = _flags(SPEC["modes"][quant]) | _flags(SPEC["kv_cache"][kv_cache_dtype])
    bad = problems(mode)
    if bad:  # the named modes are valid by construction; this guards edits of the JSON
        raise KilnError(f"--quant {quant} with --kv-cache-dtype {kv_cache_dtype} is invalid: "
                        f"{'; '.join(bad)}")
    return mode


def check_targets(mode: QuantMode, quant: str, kv_cache_dtype: str, targets: list[int]) -> None:
    """Refuses target GPUs too old for the mode (FP8 needs SM 89: Ada or Hopper)."""
    need = min_sm(mode)
    old = [sm for sm in targets if sm < need]
    if old:
        what = (f"--quant {quant}" if mode & QuantMode.FP8_QDQ
                else f"--kv-cache-dtype {kv_cache_dtype}")
        raise KilnError(f"{what} needs SM {need} or newer, but --target-sm includes "
                        f"{', '.join(map(str, old))}; drop those targets or choose another mode")


GROUP_SIZES = (128, 64, 32)  # int4; by default each GEMM takes the largest that divides its K
INT4_MODES = ("int4_awq", "int4_gptq")


def check_group_size(quant: str, group_size: int | None) -> None:
    """--quant-group-size: None (the default rule) or one of GROUP_SIZES, with an int4 mode."""
    if group_size is None:
        return
    if quant not in INT4_MODES:
        raise KilnError(f"--quant-group-size applies to --quant {' and '.join(INT4_MODES)} only; "
                        f"drop it for --quant {quant}")
    if group_size not in GROUP_SIZES:
        sizes = sorted(GROUP_SIZES)
        raise KilnError(f"--quant-group-size {group_size} is not supported; use "
                        f"{', '.join(map(str, sizes[:-1]))} or {sizes[-1]}")


def describe(mode: QuantMode) -> str:
    return "|".join(f.name for f in QuantMode if mode & f) or "NONE"
