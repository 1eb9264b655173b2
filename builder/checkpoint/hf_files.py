"""Finding and validating the weight files of a HuggingFace model directory.

Validation reads headers and file sizes only, so a truncated download is refused at open time
without touching the tensor data.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln.builder.errors import KilnError

from .base import one_line

_REDOWNLOAD = "re-download the checkpoint"

# (single-file name, index name) in the order HuggingFace itself prefers them.
_LAYOUTS = (
    ("safetensors", "model.safetensors", "model.safetensors.index.json"),
    ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
)

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(slots=True)
class WeightFiles:
    """The weight files of a checkpoint and, when sharded, which file holds each tensor."""

    kind: str  # "safetensors" or "bin"
    files: list[Path]
    weight_map: dict[str, Path] | None


# Multimodal architectures whose language model Kiln builds on its own (text in, text out),
# and the text model class of each text model_type. Qwen2-VL's and Qwen3-VL's M-RoPE rotates a
# text-only sequence by its positions in every section: plain RoPE.
MULTIMODAL = ("Gemma3ForConditionalGeneration", "Mistral3ForConditionalGeneration",
              "LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration",
              "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration")
TEXT_ARCHITECTURES = {"gemma3_text": "Gemma3ForCausalLM", "mistral": "MistralForCausalLM",
                      "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                      "qwen2_vl_text": "Qwen2ForCausalLM", "qwen2_5_vl_text": "Qwen2ForCausalLM",
                      "qwen3_vl_text": "Qwen3ForCausalLM"}


def language_model_config(config: dict) -> dict:
    """config.json of a multimodal checkpoint (MULTIMODAL) as its language model's own: the
    text config transformers makes of it (a saved text_config keeps only what differs from its
    class's defaults; older Qwen2-VL configs hold the text fields at the top), with the token
    ids the wrapper holds over the text class's defaults. Any other config as it is."""
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in MULTIMODAL:
        return config
    import transformers

    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        composite = transformers.AutoConfig.for_model(config.get("model_type"), **fields)
    except (ValueError, TypeError, KeyError) as error:
        raise KilnError(f"config.json of {archs[0]} cannot be read by transformers "
                        f"{transformers.__version__} ({one_line(error)}); re-download it") from None
    full = composite.get_text_config().to_dict()
    kind = full.get("model_type")
    if kind not in TEXT_ARCHITECTURES:
        raise KilnError(f"config.json: {archs[0]}'s text_config is a {kind!r} model; Kiln builds "
                        f"the language model of {', '.join(MULTIMODAL)} when it is one of "
                        f"{', '.join(TEXT_ARCHITECTURES)}")
    full["architectures"] = [TEXT_ARCHITECTURES[kind]]
    given = config.get("text_config") or {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the wrapper's over defaults
        if key not in given and config.get(key) is not None:
            full[key] = config[key]
    return full


def read_config(directory: Path) -> dict:
    """config.json as a dict, or a KilnError naming what is wrong with it."""
    path = directory / "config.json"
    if not path.is_file():
        hint = ""
        ggufs = sorted(directory.glob("*.gguf"))
        if ggufs:
            hint = f" (to build from GGUF, pass the file itself, e.g. {ggufs[0]})"
        raise KilnError(f"{directory} has no config.json; pass a HuggingFace model directory "
                        f"(config.json + weights) or a .gguf file{hint}")
    return _read_json(path, "config.json")


def locate_weights(directory: Path) -> WeightFiles:
    for kind, single, index in _LAYOUTS:
        if (directory / index).is_file():
            return _from_index(directory / index, kind)
        if (directory / single).is_file():
            return WeightFiles(kind, [directory / single], None)
    expected = ", ".join(name for _, single, index in _LAYOUTS for name in (single, index))
    raise KilnError(f"no weight files in {directory} (expected one of {expected}); "
                    f"{_REDOWNLOAD} with its weights")


def _from_index(index: Path, kind: str) -> WeightFiles:
    data = _read_json(index, "the shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise KilnError(f"{index} has no 'weight_map'; {_REDOWNLOAD}")
    resolved: dict[str, Path] = {}
    for name, shard in weight_map.items():
        path = index.parent / str(shard)
        if not path.is_file():
            raise KilnError(f"{index} references shard {shard} which is missing from "
                            f"{index.parent}; {_REDOWNLOAD}")
        resolved[name] = path
    files = sorted(set(resolved.values()))
    return WeightFiles(kind, files, resolved)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise KilnError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); "
                        f"{_REDOWNLOAD}") from None
    except UnicodeDecodeError:
        raise KilnError(f"{path} is not UTF-8 text; {_REDOWNLOAD}") from None
    if not isinstance(data, dict):
        raise KilnError(f"{path} should hold a JSON object ({what}) but holds "
                        f"{type(data).__name__}; {_REDOWNLOAD}")
    return data


def safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes from a safetensors header, after checking the file is complete."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise KilnError(f"{path} is truncated: {size} bytes, too short for a safetensors "
                            f"header; {_REDOWNLOAD}")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise KilnError(f"{path} is truncated: its header needs {8 + header_len} bytes but "
                            f"the file has {size}; {_REDOWNLOAD}")
        raw = file.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KilnError(f"{path} has a corrupt safetensors header; {_REDOWNLOAD}") from None
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise KilnError(f"{path} has a corrupt or unsupported header entry for {name!r}; "
                            f"{_REDOWNLOAD}") from None
        data_end = max(data_end, int(end))
        out[name] = (shape, dtype)
    if 8 + header_len + data_end > size:
        raise KilnError(f"{path} is truncated: its tensors need {8 + header_len + data_end} bytes "
                        f"but the file has {size}; {_REDOWNLOAD}")
    return out


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin state dict, memory-mapped so no tensor data is read yet."""
    # torch's zip format keeps its directory at the end, so any truncation makes this fail.
    if not zipfile.is_zipfile(path):
        raise KilnError(f"{path} is truncated or corrupt (no zip directory at its end; files "
                        f"saved by torch<1.6 are not supported either); {_REDOWNLOAD} or "
                        "convert it to safetensors")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise KilnError(f"{path} cannot be read as a PyTorch checkpoint ({one_line(error)}); "
                        f"it may be truncated or corrupt: {_REDOWNLOAD}") from None
    if not isinstance(state, dict):
        raise KilnError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; "
                        "save the model with save_pretrained")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
