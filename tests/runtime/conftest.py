"""Fixtures shared by the runtime tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def hf_and_runner(tiny_engine):
    """(the HF model, a CPU ModelRunner) of the tiny Llama checkpoint and its engine."""
    from transformers import AutoModelForCausalLM

    from kiln.runtime import ModelRunner

    ckpt, engine = tiny_engine("llama")
    model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32).eval()
    with ModelRunner.from_dir(engine, device="cpu") as runner:
        yield model, runner
