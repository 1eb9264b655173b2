"""`python -m kiln.runtime.serve` is engine-serve."""
from kiln.runtime.serve.cli import serve_main

serve_main()
