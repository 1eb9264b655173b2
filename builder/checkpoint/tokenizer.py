"""Writing a checkpoint's tokenizer in the one form engines carry: tokenizer.json and friends.

Whatever the source (fast tokenizer files, a sentencepiece model, GGUF metadata), the output is
tokenizer.json + tokenizer_config.json with the chat template inside it when one is known, and
generation_config.json when bos/eos ids are known.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from kiln.builder.errors import KilnError

from .base import one_line, write_json

_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "generation_config.json", "chat_template.jinja")
# Files from which transformers can build a fast tokenizer when tokenizer.json is absent.
_SLOW_SOURCES = ("tokenizer.model", "vocab.json", "tokenizer_config.json")


def save_hf_tokenizer(src: Path, out: Path, hf_config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if (src / "tokenizer.json").is_file():
        for name in _COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
    elif any((src / name).is_file() for name in _SLOW_SOURCES):
        _convert_slow(src, out)
        for name in ("generation_config.json", "chat_template.jinja"):
            if (src / name).is_file() and not (out / name).is_file():
                shutil.copyfile(src / name, out / name)
    else:
        raise KilnError(f"{src} has no tokenizer (expected tokenizer.json, tokenizer.model or "
                        "vocab.json); copy the tokenizer files of the model into it")
    if not (out / "generation_config.json").is_file():
        ids = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if hf_config.get(k) is not None}
        if ids:
            write_json(out / "generation_config.json", ids)
    embed_chat_template(out, _processor_template(src))


def _processor_template(src: Path) -> str | None:
    """The chat template a multimodal checkpoint keeps in chat_template.json (its processor's)."""
    path = src / "chat_template.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError) as error:
        raise KilnError(f"{path} is not the JSON of a chat template ({one_line(error)}); "
                        "re-download it or remove it") from None
    return template if isinstance(template, str) else None


def tokenizer_cache_dir() -> Path:
    """Where tokenizers rebuilt from GGUF files are kept: ~/.cache/kiln/tokenizers, or
    $KILN_TOKENIZER_CACHE."""
    return Path(os.environ.get("KILN_TOKENIZER_CACHE", Path.home() / ".cache" / "kiln" / "tokenizers"))


def save_gguf_tokenizer(path: Path, out: Path, chat_template: str | None,
                        generation: dict, header_digest: str | None = None) -> None:
    """Rebuild a fast tokenizer from GGUF metadata with transformers' own converter. With the
    digest of the file's header (GGUFFile.header_digest: its metadata, the tokenizer's included)
    the result is kept in tokenizer_cache_dir(), keyed by it and the transformers and tokenizers
    versions, and a later build of a file with the same header copies it (the converter reads the
    whole file again: ~10 s for SmolLM2-135M on two cores)."""
    out.mkdir(parents=True, exist_ok=True)
    entry = _cache_entry(header_digest) if header_digest else None
    if entry is None or not _copy_files(entry, out):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            tokenizer.save_pretrained(str(out))
        except Exception as error:
            raise KilnError(f"cannot rebuild the tokenizer from {path} ({one_line(error)}); "
                            "build from the HuggingFace checkpoint of this model instead") from None
        _check_fast(out, path)
        if entry is not None:
            _keep(out, entry)
    embed_chat_template(out, chat_template)
    if generation:
        write_json(out / "generation_config.json", generation)


def _cache_entry(header_digest: str) -> Path:
    from importlib.metadata import version

    key = json.dumps(["gguf-tokenizer", header_digest, version("transformers"), version("tokenizers")])
    return tokenizer_cache_dir() / hashlib.sha256(key.encode()).hexdigest()


def _copy_files(entry: Path, out: Path) -> bool:
    """Copies a kept tokenizer's files into `out`; False where there is none (or it is unreadable)."""
    try:
        if not (entry / "tokenizer.json").is_file():
            return False
        for file in entry.iterdir():
            shutil.copyfile(file, out / file.name)
    except OSError:
        return False
    return True


def _keep(out: Path, entry: Path) -> None:
    """Keeps the tokenizer files in `out` as `entry`, whole or not at all (a folder renamed into
    place); a cache that cannot be written costs the next build the conversion, nothing more."""
    staged = None
    try:
        if entry.is_dir() and not (entry / "tokenizer.json").is_file():  # damaged
            shutil.rmtree(entry)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=entry.parent, prefix=entry.name + "."))
        for file in out.iterdir():
            if file.is_file():
                shutil.copyfile(file, staged / file.name)
        staged.rename(entry)
        staged = None
    except OSError:
        pass  # unwritable, or another build kept the same entry first
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)


def _convert_slow(src: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    if (src / "tokenizer.model").is_file():
        absent = [pip for module, pip in (("sentencepiece", "sentencepiece"),
                                          ("google.protobuf", "protobuf"))
                  if not _importable(module)]
        if absent:
            raise KilnError(f"converting {src / 'tokenizer.model'} to tokenizer.json needs "
                            f"{' and '.join(absent)}: pip install {' '.join(absent)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        tokenizer.save_pretrained(str(out))
    except Exception as error:
        raise KilnError(f"cannot convert the tokenizer in {src} to tokenizer.json "
                        f"({one_line(error)}); add the model's tokenizer.json to it") from None
    _check_fast(out, src)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _check_fast(out: Path, src: Path) -> None:
    if not (out / "tokenizer.json").is_file():
        raise KilnError(f"the tokenizer of {src} has no fast (tokenizer.json) form; add the "
                        "model's tokenizer.json next to it")


def embed_chat_template(out: Path, template: str | None = None) -> None:
    """Make tokenizer_config.json carry the chat template, wherever it was found."""
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if not config:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    jinja = out / "chat_template.jinja"
    if jinja.is_file():  # the tokenizer's own template first
        template = jinja.read_text(encoding="utf-8")
    if template is not None and not config.get("chat_template"):
        config["chat_template"] = template
    write_json(config_path, config)
