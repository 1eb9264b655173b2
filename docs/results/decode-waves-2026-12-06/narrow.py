"""python3 narrow.py (-m MODULE | -c CODE) ARGS: runs Python as python3 would, with the plan's
decode kernel limited to its narrow launch for long unsplit steps (attention.decode_wide_launch
giving None), as the tree before the wide launch planned it: run.sh's A engine."""
import runpy
import sys

import kiln.builder.kernels.attention as attention

attention.decode_wide_launch = lambda *_: None
flag, target, *rest = sys.argv[1:]
if flag == "-m":
    sys.argv = [target] + rest
    runpy.run_module(target, run_name="__main__", alter_sys=True)
elif flag == "-c":
    sys.argv = ["-c"] + rest
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
else:
    raise SystemExit(f"narrow.py: -m MODULE or -c CODE, not {flag}")
