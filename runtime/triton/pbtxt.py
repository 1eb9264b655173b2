"""Protobuf text format for Triton's `config.pbtxt`, written from plain Python values.

A dict is a message, a list a repeated field, `Enum("TYPE_INT32")` an enum value, and
`Map({...})` a map field (`parameters`, `input_map`); everything else is a scalar. Written by
hand so that writing a repository needs no protobuf package; tests parse the output against
Triton's ModelConfig schema.
"""
from __future__ import annotations

import json


class Enum(str):
    """An enum value: written bare, not quoted."""


class Map(dict):
    """A protobuf map field: one `name { key: ... value: ... }` entry per item."""


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # quotes and backslashes escaped as text format wants
    raise TypeError(f"cannot write {type(value).__name__} to protobuf text format")


def _field(name: str, value, indent: str, out: list[str]) -> None:
    if isinstance(value, Map):
        for k, v in value.items():
            _field(name, {"key": k, "value": v}, indent, out)
    elif isinstance(value, list):
        if value and all(not isinstance(v, dict) for v in value):
            out.append(f"{indent}{name}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            for v in value:
                _field(name, v, indent, out)
    elif isinstance(value, dict):
        out.append(f"{indent}{name} {{")
        for k, v in value.items():
            _field(k, v, indent + "  ", out)
        out.append(f"{indent}}}")
    elif value is not None:
        out.append(f"{indent}{name}: {_scalar(value)}")


def to_pbtxt(message: dict) -> str:
    out: list[str] = []
    for name, value in message.items():
        _field(name, value, "", out)
    return "\n".join(out) + "\n"
