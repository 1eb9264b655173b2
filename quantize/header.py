"""Renders csrc/runtime/quant_mode.h from quant_mode.json.

    python -m kiln.quantize.header > csrc/runtime/quant_mode.h

tests/quantize/test_mode.py fails when the header on disk differs from what this renders.
"""
from __future__ import annotations

import sys

from kiln.quantize.mode import SPEC


def _mask(names: list[str]) -> str:
    return " | ".join(f"QuantMode::k{_camel(n)}" for n in names) or "0u"


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.lower().split("_"))


def render() -> str:
    out = ["// Generated from quantize/quant_mode.json by `python -m kiln.quantize.header`;",
           "// edit the JSON and regenerate, never this file.",
           "#pragma once", "", "#include <cstdint>", "#include <string_view>", "",
           "namespace kiln", "{", "",
           "/// @brief Flags of what an engine's weights, activations and KV cache hold;",
           "/// config.json records them as build.quant_mode.",
           "struct QuantMode", "{"]
    for name, flag in SPEC["flags"].items():
        out.append(f"    /// @brief {flag['doc'][0].upper() + flag['doc'][1:]}.")
        out.append(f"    static constexpr std::uint32_t k{_camel(name)} = 1u << {flag['bit']};")
    out += ["};", "",
            "/// @brief The flags of a named mode (`--quant`); false when the name is unknown.",
            "[[nodiscard]] constexpr bool quantModeOf(std::string_view name, std::uint32_t& flags)",
            "{"]
    for name, flags in SPEC["modes"].items():
        out += [f"    if (name == \"{name}\")", "    {", f"        flags = {_mask(flags)};",
                "        return true;", "    }"]
    out += ["    return false;", "}", "",
            "/// @brief The flags of a KV cache option (`--kv-cache-dtype`); false when unknown.",
            "[[nodiscard]] constexpr bool kvCacheModeOf(std::string_view name, "
            "std::uint32_t& flags)",
            "{"]
    for name, flags in SPEC["kv_cache"].items():
        out += [f"    if (name == \"{name}\")", "    {", f"        flags = {_mask(flags)};",
                "        return true;", "    }"]
    out += ["    return false;", "}", "",
            "/// @brief Whether a combination of flags is one Kiln can build and run.",
            "[[nodiscard]] constexpr bool isValidQuantMode(std::uint32_t flags)", "{"]
    for group in SPEC["exclusive"]:
        terms = " + ".join(f"((flags & QuantMode::k{_camel(n)}) != 0)" for n in group)
        out.append(f"    if ({terms} > 1)")
        out.append("        return false;")
    for name, needs in SPEC["requires"].items():
        need = _mask(needs)
        flag = f"QuantMode::k{_camel(name)}"
        out.append(f"    if ((flags & {flag}) && (flags & ({need})) != ({need}))")
        out.append("        return false;")
    out += ["    return true;", "}", "",
            "/// @brief The oldest SM architecture whose kernels can run `flags` (0: any).",
            "[[nodiscard]] constexpr int minSmOf(std::uint32_t flags)", "{", "    int sm = 0;"]
    for name, sm in SPEC["min_sm"].items():
        out.append(f"    if ((flags & QuantMode::k{_camel(name)}) && sm < {sm})")
        out.append(f"        sm = {sm};")
    out += ["    return sm;", "}", "", "} // namespace kiln", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
