#!/usr/bin/env bash
# The executor's host time a decode step on this machine's CPU (~20 s after the install):
# executor_host.cpp against the runtime library the editable install built. On the H100 host,
# a BF16 128/128 run's decode-only steps of 1,760 sequences spent 2.20 ms outside the backend's
# call (docs/results/profile-held-2026-12-06), while the GPU waited; this says how much of that
# is the executor's own work at that host's speed.
cd "$(dirname "$0")/../../.."
D=docs/results/executor-host-2026-12-06
if [ "${1:-}" != --no-install ]; then
  . docs/results/fp8_ab.sh
  kiln_install
fi
lib=$(find build -name libkiln_runtime.a | head -1)
[ -n "$lib" ] || { echo "no libkiln_runtime.a under build/ (install Kiln editable first)"; exit 1; }
g++ -O2 -std=c++20 -I csrc "$D/executor_host.cpp" "$lib" -lpthread -o /tmp/executor_host || exit 1
lscpu | grep -E "^Model name|^CPU\(s\)|MHz" | head -4
for n in 1760 2048; do /tmp/executor_host "$n"; done
