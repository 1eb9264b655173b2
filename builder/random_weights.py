"""A checkpoint of random weights in the exact shape of a named real model, made on the fly.

Speed depends on shapes, not values, so an engine of random weights measures what the real
model would, with no download. Tensors are drawn one at a time when the builder asks for them
(on the GPU when there is one: an 8B model is then made in seconds) and each is seeded by its
name, so the same name and seed give the same weights on the same kind of device.

    with RandomCheckpoint("llama-3.1-8b") as ckpt:
        build_engine(ckpt, "engines/llama-3.1-8b", BuildConfig(dtype="bfloat16"))
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

from kiln.builder.checkpoint.base import Checkpoint
from kiln.builder.errors import KilnError
from kiln.builder.models.config import ModelConfig
from kiln.builder.models.llama import weight_shapes
from kiln.builder.model_shapes import SHAPE_NAMES, real_config

# Trained transformers keep most weights near this scale (it is also HF's initializer_range);
# values this size keep activations finite through every layer in bfloat16.
WEIGHT_STD = 0.02
# RMSNorm weights multiply the normalized activations, so they sit around 1, not 0.
_NORM_SUFFIXES = ("norm.weight",)


class RandomCheckpoint(Checkpoint):
    """Random weights of the shape `name` (see SHAPE_NAMES); `num_layers` keeps only the first
    layers (every tensor keeps its real shape), for tests that cannot afford the whole model."""

    has_tokenizer = False  # --quant calibrates on random token ids

    def __init__(self, name: str, seed: int = 0, num_layers: int | None = None) -> None:
        config = real_config(name)
        if config is None:
            raise KilnError(f"unknown model shape {name!r} for --random-weights; choose one of "
                            f"{', '.join(SHAPE_NAMES)}")
        real_layers = config["num_hidden_layers"]
        if num_layers is not None:
            if not 1 <= num_layers <= real_layers:
                raise KilnError(f"--random-layers {num_layers} is outside 1..{real_layers} "
                                f"(the layers {name} has)")
            config["num_hidden_layers"] = num_layers
        self.name = name
        self.seed = seed
        self.path = Path(f"<random {name}>")
        self.hf_config = config
        self.stored_dtype = getattr(torch, config["torch_dtype"])
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._shapes = weight_shapes(ModelConfig.from_hf(config))

    def __repr__(self) -> str:
        return f"RandomCheckpoint({self.name!r}, seed={self.seed})"

    def _names(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def _meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._shapes[name], self.stored_dtype

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh random tensor, drawn and cast on the device, then handed over on the CPU."""
        self._check_name(name)
        return self._draw(name, dtype or self.stored_dtype)

    def _load(self, name: str) -> torch.Tensor:
        return self._draw(name, self.stored_dtype)

    def _draw(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(self.seed_of(name))
        values = torch.randn(self._shapes[name], generator=generator, device=self.device,
                             dtype=torch.float32).mul_(WEIGHT_STD)
        if name.endswith(_NORM_SUFFIXES):
            values.add_(1.0)
        return values.to(dtype).cpu()

    def seed_of(self, name: str) -> int:
        """Each tensor's own stream, independent of the order the builder asks in. 32 bits:
        the CPU generator (Mersenne Twister) keeps no more of a seed."""
        return zlib.crc32(f"{self.seed}/{name}".encode())

    def save_tokenizer(self, out_dir: str | Path) -> None:
        """Random weights come with no tokenizer: the engine takes token ids only."""
