"""Calibration and evaluation text: a user's file, or CPython's own documentation.

The default, `pydoc_data.topics` (about 65k words of English that ship with every Python), is
what `engine-build --quant` calibrates on and `engine-eval` measures when given no file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from kiln.builder.errors import KilnError

DEFAULT_NAME = "pydoc_data.topics"


def default_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path: str | Path | None, option: str = "--calib-dataset") -> str:
    """A plain text file, or JSON lines with a "text" field each (.jsonl); None: the default."""
    if path is None:
        return default_text()
    path = Path(path)
    if not path.is_file():
        raise KilnError(f"{option} {path} does not exist; pass a UTF-8 text or .jsonl file, "
                        f"or leave it out to use {DEFAULT_NAME}")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KilnError(f"{option} {path} is not UTF-8 text; pass a UTF-8 text or .jsonl "
                        "file") from None
    if path.suffix != ".jsonl":
        return raw
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (ValueError, KeyError, TypeError):
            raise KilnError(f"{option} {path} line {number} is not a JSON object with a \"text\" "
                            "field; write one {\"text\": ...} per line") from None
    return "\n\n".join(texts)


def tokenize(text: str, tokenizer_dir: Path) -> list[int]:
    """Token ids of `text` by the tokenizer an engine (or a staged build) carries."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def calibration_batches(ids: list[int], size: int, seq_len: int, source: str) -> torch.Tensor:
    """`size` windows of `seq_len` tokens spread evenly over the text: int64 [size, seq_len]."""
    if size < 1 or seq_len < 2:
        raise KilnError(f"--calib-size must be at least 1 and --calib-seq-len at least 2, got "
                        f"{size} and {seq_len}")
    need = size * seq_len
    if len(ids) < need:
        raise KilnError(f"calibration text {source} has {len(ids)} tokens, too short for "
                        f"--calib-size {size} x --calib-seq-len {seq_len} = {need}; pass a longer "
                        "--calib-dataset or lower those numbers")
    stride = (len(ids) - seq_len) // max(size - 1, 1)
    tokens = torch.tensor(ids, dtype=torch.int64)
    return torch.stack([tokens[i * stride: i * stride + seq_len] for i in range(size)])
