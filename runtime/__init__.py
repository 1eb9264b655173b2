"""Kiln's runtime: ModelRunner over the C++ executor, the CPU reference backend, engine-run."""
from kiln.runtime.model_runner import ModelRunner

__all__ = ["ModelRunner"]
