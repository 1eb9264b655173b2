"""Shared fixtures: engines built once per test session."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kiln_testing import TINY_ARCHS, make_tiny_checkpoint  # noqa: E402

ARCHS = TINY_ARCHS


@pytest.fixture(scope="session", autouse=True)
def tokenizer_cache(tmp_path_factory):
    """Tokenizers rebuilt from GGUF files (kiln.builder.checkpoint.tokenizer) kept in the
    session's own folder, not the user's cache."""
    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("tokenizers")
    patch.setenv("KILN_TOKENIZER_CACHE", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory):
    """tiny_engine(arch, dtype="float32", **build) -> (checkpoint dir, engine dir), cached."""
    from kiln.builder.build import build_engine
    from kiln.builder.models import BuildConfig

    built = {}

    def get(arch: str, dtype: str = "float32", **build):
        key = (arch, dtype, tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                         for k, v in build.items())))
        if key not in built:
            root = tmp_path_factory.mktemp(f"{arch}-{dtype}")
            ckpt = make_tiny_checkpoint(arch, root / "hf", seed=ARCHS.index(arch))
            config = dict(dtype=dtype, max_batch_size=8, max_seq_len=128, max_num_tokens=64,
                          tokens_per_block=4) | build
            build_engine(ckpt, root / "engine", BuildConfig(**config), progress=False)
            built[key] = (ckpt, root / "engine")
        return built[key]

    return get


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(engine dir, HF model, HF tokenizer) for the bundled SmolLM2-135M GGUF, float32."""
    import torch
    import transformers

    from kiln.builder.build import build_engine
    from kiln.builder.checkpoint import find_bundled_gguf
    from kiln.builder.models import BuildConfig

    gguf = find_bundled_gguf()
    out = tmp_path_factory.mktemp("smol") / "engine"
    build = BuildConfig(dtype="float32", max_batch_size=8, max_seq_len=256, max_num_tokens=128,
                        tokens_per_block=16)
    build_engine(gguf, out, build, progress=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return out, model, tokenizer
