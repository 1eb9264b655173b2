"""A Triton Inference Server model repository for a Kiln engine (engine-triton-repo)."""
from kiln.runtime.triton.repository import RepositoryOptions, write_repository

__all__ = ["RepositoryOptions", "write_repository"]
