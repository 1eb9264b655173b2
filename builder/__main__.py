"""`python -m kiln.builder` is engine-build."""
from kiln.builder.cli import build_main

build_main()
