"""What engine-build does about quantization before its passes run: settle the mode (a
pre-quantized checkpoint builds in its own) and attach the calibrator the quantize_* passes
read their scales from."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln.builder.errors import KilnError


DEFAULT_SEQ_LEN = 512


@dataclass(slots=True)
class CalibrationOptions:
    """--calib-dataset (None: pydoc_data.topics), --calib-size, --calib-seq-len (None: 512, or
    the model's limit when shorter)."""
    dataset: str | None = None
    size: int = 32
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise KilnError(f"--calib-size must be at least 1, got {self.size}")
        if self.seq_len is not None and self.seq_len < 2:
            raise KilnError(f"--calib-seq-len must be at least 2, got {self.seq_len}")


def _follow_checkpoint(build, pre) -> "object":
    """The build settings a pre-quantized checkpoint implies, or a KilnError if they clash."""
    quant = build.quant
    if quant not in ("none", pre.quant):
        raise KilnError(f"the checkpoint is pre-quantized as {pre.quant} ({pre.method}); build it "
                        f"with --quant {pre.quant} or leave --quant out")
    kv = build.kv_cache_dtype
    if kv == "auto":
        kv = pre.kv_cache_dtype
    elif kv != pre.kv_cache_dtype:
        have = f"{pre.kv_cache_dtype} KV cache scales" if pre.kv_cache_dtype != "auto" else \
            "no KV cache scales"
        raise KilnError(f"--kv-cache-dtype {kv} does not fit the checkpoint, which has {have}; "
                        "leave --kv-cache-dtype out")
    if build.quant_group_size not in (None, pre.group_size):
        raise KilnError(f"--quant-group-size {build.quant_group_size} does not fit the checkpoint, "
                        f"which has groups of {pre.group_size}; leave --quant-group-size out")
    return dataclasses.replace(build, quant=pre.quant, kv_cache_dtype=kv, quant_mode=None,
                               calibrator=pre)


def prepare(build, ckpt, tokenizer_dir: Path, options: CalibrationOptions | None, model):
    """`build` with its quantization settled and, when it quantizes, a calibrator attached."""
    pre = getattr(ckpt, "prequantized", None)
    if pre is not None:
        return _follow_checkpoint(build, pre)
    if build.quant == "none" and build.kv_cache_dtype == "auto":
        return build
    if build.calibrator is not None:
        return build
    from kiln.quantize.calibrate import ModeloptCalibrator, import_modelopt
    from kiln.quantize.dataset import DEFAULT_NAME, calibration_batches, read_text, tokenize

    import_modelopt()  # fail before tokenizing if it is missing
    options = options or CalibrationOptions()
    seq_len = options.seq_len or min(DEFAULT_SEQ_LEN, model.max_position_embeddings)
    if seq_len > model.max_position_embeddings:
        raise KilnError(f"--calib-seq-len {seq_len} exceeds the model's "
                        f"{model.max_position_embeddings} positions; lower it")
    if getattr(ckpt, "has_tokenizer", True):
        ids = tokenize(read_text(options.dataset), tokenizer_dir)
        source = options.dataset or DEFAULT_NAME
    elif options.dataset is not None:
        raise KilnError(f"--calib-dataset needs a tokenizer and {ckpt!r} has none; leave it "
                        "out (random weights calibrate on random token ids)")
    else:  # random weights: random tokens exercise them as well as any text would
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.vocab_size, (options.size * seq_len,),
                            generator=generator).tolist()
        source = "random token ids"
    batches = calibration_batches(ids, options.size, seq_len, source)
    # A block-quantized GGUF's own blocks are the int4 groups its weights already have.
    native = getattr(ckpt, "block_size", None)
    return dataclasses.replace(build, calibrator=ModeloptCalibrator(batches,
                                                                    native_group_size=native))


def cli_settings(checkpoint_path, quant: str | None, kv_cache_dtype: str) -> tuple[str, str]:
    """engine-build's --quant / --kv-cache-dtype with a pre-quantized checkpoint's own mode
    filled in where they were left out (no path: random weights, nothing to read)."""
    if checkpoint_path is not None and (quant is None or kv_cache_dtype == "auto"):
        from kiln.builder.checkpoint import open_checkpoint

        with open_checkpoint(checkpoint_path) as ckpt:
            pre = getattr(ckpt, "prequantized", None)
        if pre is not None:
            quant = quant or pre.quant
            kv_cache_dtype = pre.kv_cache_dtype if kv_cache_dtype == "auto" else kv_cache_dtype
    return quant or "none", kv_cache_dtype


def default_targets(quant: str, kv_cache_dtype: str,
                    known: tuple[int, ...] = (80, 89, 90)) -> list[int]:
    """The default --target-sm list without the GPUs too old for the mode."""
    from kiln.quantize.mode import min_sm, quant_mode

    need = min_sm(quant_mode(quant, kv_cache_dtype))
    return [sm for sm in known if sm >= need]
