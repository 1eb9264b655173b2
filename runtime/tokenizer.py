"""The engine's tokenizer, loaded on first use."""
from __future__ import annotations

import json
from functools import cached_property

from kiln.builder.errors import KilnError


class EngineTokenizer:
    def __init__(self, engine) -> None:
        self.dir = engine.tokenizer_dir
        self.model_eos = engine.config.model.eos_token_id

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
