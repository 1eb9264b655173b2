#!/usr/bin/env bash
# One GPU call (~8 min on an H100): BF16 + FP8 KV 128/128 (3,000 requests) on the sized engine
# (scripts/bench_gpu.sh) with the GEMM choices timed at load (T) against the gate/up GEMM's
# paired GLU kernel (tma_gemm_kernel) run from 4,096 rows (K: the steps with prompt tokens) and
# from 2,048 rows (F: the decode-only steps of ~3,000 sequences too), `engine-bench throughput
# --kernels-from-rows`; T K F, the two kernel comparisons prepared in ../tma-glu-2026-12-07
# (engine_vs_sweep.sh, silu_pairs.sh), then T K F again as the call's time allows.
# Logs in $OUT/logs.tgz.
cd "$(dirname "$0")/../../.."
. docs/results/fp8_ab.sh
one_call kernels-from
. docs/results/kernels-from-2026-12-07/common.sh
for pass in 1 2; do
  for v in T:0 K:4096 F:2048; do
    [ $(( $(date +%s) - T0 )) -lt "${LAST_BEFORE:-530}" ] || break 2
    run "${v%%:*}$pass" "${v#*:}"
  done
  [ $pass = 1 ] || break
  # Between the passes, the kernel comparisons (~1 minute each).
  OUT=$LOG timeout 100 bash docs/results/tma-glu-2026-12-07/engine_vs_sweep.sh > /dev/null 2>&1
  at "engine_vs_sweep rc $?"; cat "$LOG/engine-vs-sweep.txt"
  OUT=$LOG timeout 80 bash docs/results/tma-glu-2026-12-07/silu_pairs.sh > /dev/null 2>&1
  at "silu_pairs rc $?"; cat "$LOG/silu-pairs.txt"
done
at done
