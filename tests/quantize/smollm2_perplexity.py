"""Perplexity of SmolLM2-135M on pydoc_data.topics, float32 against each quantization mode.

    python tests/quantize/smollm2_perplexity.py OUT_DIR [--dtype D] [--max-tokens N]
                                                [--quant-group-size G] [MODE ...]
    # MODE: quant or quant+kv, e.g. fp8+fp8; D: float32 (default) or bfloat16;
    # N: score the first N tokens of the text only (default: all of it);
    # G: the int4 modes' --quant-group-size (default: engine-build's)

Builds each engine from the bundled GGUF (calibrating on the default text), evaluates it with
the CPU reference backend and appends one JSON line per mode to OUT_DIR/perplexity.jsonl.
test_smollm2_perplexity.py runs it (opt-in: KILN_SLOW=1); docs/quantization.md shows its table.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

MODES = ["none", "fp8", "fp8+fp8", "none+fp8", "none+int8", "int8_sq", "int8_wo", "int4_awq",
         "int4_gptq"]
WINDOW = 1024


def build_config(quant: str, kv: str, dtype: str, group_size: int | None = None):
    from kiln.builder.models import BuildConfig
    from kiln.quantize.mode import INT4_MODES

    return BuildConfig(dtype=dtype, max_batch_size=256, max_seq_len=WINDOW,
                       max_num_tokens=256, tokens_per_block=32, targets=[89, 90], quant=quant,
                       kv_cache_dtype=kv,
                       quant_group_size=group_size if quant in INT4_MODES else None)


def measure(mode: str, out: Path, max_tokens: int | None = None, dtype: str = "float32",
            group_size: int | None = None) -> dict:
    from kiln.builder.build import build_engine
    from kiln.builder.checkpoint import find_bundled_gguf
    from kiln.builder.engine import load_engine
    from kiln.quantize.dataset import default_text, tokenize
    from kiln.runtime.eval import perplexity

    quant, _, kv = mode.partition("+")
    built_config = build_config(quant, kv or "auto", dtype, group_size)
    group = built_config.quant_group_size
    engine_dir = out / (f"engine-{dtype}-{mode}" + (f"-g{group}" if group else ""))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = build_engine(find_bundled_gguf(), engine_dir,
                              built_config, overwrite=True,
                              progress=False)
    built = time.perf_counter()
    engine = load_engine(engine_dir)
    ids = tokenize(default_text(), engine.tokenizer_dir)
    result = perplexity(engine, ids, WINDOW, max_tokens=max_tokens)
    row = {"mode": mode, "dtype": dtype, "quant": quant, "kv_cache_dtype": kv or "auto",
           "quant_group_size": group, "perplexity": result.value, "tokens": result.tokens,
           "engine_mib": round(report.engine_bytes / 2**20, 1),
           "build_s": round(built - start, 1), "eval_s": round(time.perf_counter() - built, 1)}
    with open(out / "perplexity.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    out, args = Path(sys.argv[1]), sys.argv[2:]
    options = {"--dtype": "float32", "--max-tokens": None, "--quant-group-size": None}
    while args[:1] and args[0] in options:
        options[args[0]] = args[1]
        args = args[2:]
    dtype = options["--dtype"]
    max_tokens, group_size = (int(options[o]) if options[o] else None
                              for o in ("--max-tokens", "--quant-group-size"))
    out.mkdir(parents=True, exist_ok=True)
    for mode in args or MODES:
        print(json.dumps(measure(mode, out, max_tokens=max_tokens, dtype=dtype,
                                 group_size=group_size)), flush=True)
