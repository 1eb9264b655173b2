"""`python -m kiln.runtime.bench` is engine-bench."""
from kiln.runtime.bench.cli import bench_main

bench_main(prog_name="engine-bench")
