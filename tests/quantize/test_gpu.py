"""On the GPU (pytest -m gpu): calibration runs on the GPU, and each quantized engine agrees with
modelopt's fake-quantized model there too, on the GPU plan executor when the engine has kernels
for its quantized ops."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "gpu"))
from kernel_checks import rel_err  # noqa: E402

pytestmark = pytest.mark.gpu

MODES = [("fp8", "auto"), ("int8_sq", "auto"), ("int8_wo", "auto"), ("int4_awq", "auto"),
         ("int4_gptq", "auto"), ("fp8", "fp8"), ("none", "int8")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    pytest.importorskip("modelopt.torch.quantization", reason="needs nvidia-modelopt")
    from kiln_testing import make_tiny_checkpoint
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("qgpu") / "hf")


def gpu_build(ckpt, out, quant, kv):
    from kiln.builder.build import build_engine
    from kiln.builder.engine import load_engine
    from kiln.builder.models import BuildConfig
    from kiln.quantize.calibrate import ModeloptCalibrator

    major, minor = torch.cuda.get_device_capability()
    calibrator = ModeloptCalibrator(torch.randint(3, 320, (6, 32), generator=torch.Generator().manual_seed(0)),
                                    device="cuda")
    build = BuildConfig(dtype="float32", max_batch_size=64, max_seq_len=128, max_num_tokens=64,
                        tokens_per_block=8, targets=[major * 10 + minor], quant=quant,
                        kv_cache_dtype=kv, calibrator=calibrator)
    build_engine(ckpt, out, build, progress=False)
    return load_engine(out), calibrator


@pytest.mark.parametrize("quant, kv", MODES)
def test_gpu_calibration_and_engine_agree_with_modelopt(ckpt, tmp_path, quant, kv):
    from test_calibration import TOLERANCE, engine_logits

    engine, calibrator = gpu_build(ckpt, tmp_path / "e", quant, kv)
    tokens = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fake = calibrator.module(tokens, all_logits=True).float().cpu()
    bound = TOLERANCE * fake.abs().max().item()
    assert (engine_logits(engine, tokens) - fake).abs().max().item() <= bound
    from kiln import _core
    if not (engine.kernels and hasattr(_core, "PlanExecutor")):
        pytest.skip("the engine has no GPU kernels for its quantized ops")
    backend = _core.PlanExecutor(engine, 0.5)
    step = {"input_ids": tokens.reshape(-1).numpy().astype(np.int32),
            "positions": np.tile(np.arange(24, dtype=np.int32), 2),
            "slot_mapping": np.arange(48, dtype=np.int64),
            "block_tables": np.pad(np.arange(6, dtype=np.int32).reshape(2, 3),
                                   ((0, 0), (0, engine.config.build.max_blocks_per_seq - 3))),
            "context_lens": np.array([24, 24], dtype=np.int32),
            "query_start": np.array([0, 24, 48], dtype=np.int32),
            "last_token_index": np.array([23, 47], dtype=np.int32)}
    # The plan computes the logits of each sequence's last token only.
    ours = torch.from_numpy(np.asarray(backend.forward(step)))
    if quant != "fp8":
        assert (ours - fake[[23, 47]]).abs().max().item() <= bound
        return
    # cuBLASLt's FP8 GEMMs accumulate as Hopper's FP8 tensor cores do (about 1e-4 relative, not
    # float32's 1e-7), and each FP8 activation quantization after them turns some of those
    # differences into a whole e4m3 step: a few percent by the logits. What must hold is that
    # the GPU's engine is no farther from the unquantized model than twice the fake-quantized
    # model is (a wrong scale, layout or operand is many times farther).
    import transformers
    plain = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        exact = plain(tokens).logits.reshape(-1, ours.shape[-1])[[23, 47]]
    own, gpu = rel_err(fake[[23, 47]], exact), rel_err(ours, exact)
    assert gpu < 2 * own + 0.01, f"GPU {gpu:.3f} from the unquantized model, fake-quantized {own:.3f}"
