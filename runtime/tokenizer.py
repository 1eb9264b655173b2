"""The engine's tokenizer, loaded on first use."""
from __future__ import annotations

import json
import threading
from functools import cached_property, lru_cache

from kiln.builder.errors import KilnError


class EngineTokenizer:
    def __init__(self, engine) -> None:
        self.dir = engine.tokenizer_dir
        self.model_eos = engine.config.model.eos_token_id
        self._table = None  # token_table()'s
        self._table_lock = threading.Lock()

    @cached_property
    def hf(self):
        if not (self.dir / "tokenizer.json").is_file() and not (self.dir / "tokenizer_config.json").is_file():
            raise KilnError(f"the engine has no tokenizer ({self.dir} is missing); pass token ids "
                            "instead of strings")
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(self.dir)

    @cached_property
    def eos_id(self) -> int | None:
        """The end id: generation_config's first eos, else the tokenizer's, else the model's."""
        gen = self.dir / "generation_config.json"
        candidates = []
        if gen.is_file():
            candidates.append(json.loads(gen.read_text()).get("eos_token_id"))
        if (self.dir / "tokenizer.json").is_file():
            candidates.append(self.hf.eos_token_id)
        candidates.append(self.model_eos)
        for c in candidates:
            if isinstance(c, list):
                c = c[0] if c else None
            if c is not None:
                return int(c)
        return None

    def token_table(self, vocab_size: int):
        """The bytes of each of the model's `vocab_size` token ids as a `_core.TokenTable` (made
        once; what json_object requests read)."""
        with self._table_lock:
            if self._table is None or len(self._table) != vocab_size:
                from kiln import _core
                self._table = _core.TokenTable(token_bytes(self.hf, vocab_size))
            return self._table

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def chat(self, user_message: str) -> list[int]:
        if not self.hf.chat_template:
            raise KilnError("the engine's tokenizer has no chat template; run without --chat")
        ids = self.hf.apply_chat_template([{"role": "user", "content": user_message}],
                                          add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character standing for each byte, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(hf, vocab_size: int) -> list[bytes]:
    """The bytes each token id stands for inside a text (b"" for special tokens and for ids
    past the tokenizer's), `vocab_size` of them: byte-level BPE pieces through GPT-2's
    alphabet, SentencePiece pieces with the word marker as a space and <0xNN> as byte NN, and
    other tokenizers' ids decoded one at a time."""
    decoder = json.loads(hf.backend_tokenizer.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    kinds = {d.get("type") for d in parts}
    # SentencePiece's word marker: Metaspace's replacement, or what a Replace turns into a space
    marker = next((d.get("replacement") if d.get("type") == "Metaspace" else d["pattern"].get("String")
                   for d in parts if d.get("type") == "Metaspace"
                   or (d.get("type") == "Replace" and d.get("content") == " ")), None)
    alphabet = _byte_level_alphabet()
    special = set(hf.all_special_ids) | {i for i, t in hf.added_tokens_decoder.items() if t.special}
    known = min(vocab_size, len(hf))
    out = []
    for token, piece in enumerate(hf.convert_ids_to_tokens(list(range(known)))):
        if token in special or piece is None:
            out.append(b"")
        elif "ByteLevel" in kinds and all(c in alphabet for c in piece):
            out.append(bytes(alphabet[c] for c in piece))
        elif "ByteFallback" in kinds and len(piece) == 6 and piece.startswith("<0x") \
                and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        elif marker is not None:
            out.append(piece.replace(marker, " ").encode())
        elif "ByteLevel" in kinds:  # an added token, kept as its text
            out.append(piece.encode())
        else:
            out.append(hf.decode([token]).encode())
    return out + [b""] * (vocab_size - known)
