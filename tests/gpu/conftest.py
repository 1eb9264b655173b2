"""GPU tests: they run on a machine with an NVIDIA GPU (scripts/gpu_check.sh) and skip, with
the reason, elsewhere."""
import pytest
import torch


@pytest.fixture(scope="session")
def sm() -> int:
    """The GPU's SM version (90 for an H100); skips when there is no CUDA GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


@pytest.fixture(scope="session")
def core(sm):
    """kiln._core with the GPU plan executor; skips when it was built without it."""
    from kiln import _core

    if not hasattr(_core, "PlanExecutor"):
        pytest.skip("kiln._core was built without the GPU plan executor (KILN_WITH_CUDA off, or "
                    "cublasLt.h not found at build time)")
    return _core
