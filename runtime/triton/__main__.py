"""`python -m kiln.runtime.triton` is engine-triton-repo."""
from kiln.runtime.triton.cli import triton_repo_main

triton_repo_main()
