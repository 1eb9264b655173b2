"""`python -m kiln.runtime` is engine-run."""
from kiln.runtime.cli import run_main

run_main()
