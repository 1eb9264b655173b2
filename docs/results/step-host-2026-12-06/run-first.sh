#!/usr/bin/env bash
# The first of two calls (its logs: h100-2026-12-06-first; the second: run.sh). Ran on commit
# 7055896 with a variant.diff of its csrc/ against 9b97a02: the cuBLASLt part of today's
# variant.diff and the capture of capture-behind.diff.
# One H100 call (~550 s): two changes to the host time around a step (B, this tree) against the
# tree without them (A: variant.diff reversed), on BF16 + FP8 KV 128/128 (3,000 requests):
#  - a new M above the timed range runs the cuBLASLt algorithm picked at a nearby M of the shape,
#    checked with cublasLtMatmulAlgoCheck, where A called the heuristic for every new M (each
#    step with prompt tokens spent 0.7-1.5 ms before its first launch: ../overlap-2026-12-06);
#  - a decode step of a launch shape without a graph runs launch by launch and its graph is
#    captured after its launches, while the GPU runs them, where A captured first (59 captures
#    over the run, 0.25 s of host time with the GPU idle).
# One engine, sized as bench_gpu.sh sizes it; runs B A B A, then the graph and runtime GPU tests
# on B. A is built as a wheel beside the build and installed for its runs; B's editable install
# back for its. Logs packed into $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
D=$PWD/docs/results/step-host-2026-12-06
. docs/results/fp8_ab.sh
one_call step-host
wheel_a_beside
kvfp8_128_abab
use B
timeout $(( 590 - ($(date +%s) - T0) )) python3 -m pytest -q -m gpu tests/gpu/test_graphs.py \
  tests/gpu/test_runtime_gpu.py -p no:cacheprovider > "$LOG/tests.log" 2>&1
at "tests rc $?"; tail -3 "$LOG/tests.log"
