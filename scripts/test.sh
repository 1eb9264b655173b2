#!/usr/bin/env bash
# Sets up and runs Kiln's CPU test suite: the C++ unit tests (ctest), then pytest.
# GPU tests (pytest -m gpu) run on a GPU machine through scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh --test
cmake -S . -B build/cpp -G Ninja -DKILN_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build build/cpp -j "$(nproc)"
ctest --test-dir build/cpp --output-on-failure -j "$(nproc)"
# -rs: each skip's reason, counted, so a change in what is skipped shows in the log.
$PY -m pytest -q -rs "$@"
