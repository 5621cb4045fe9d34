#!/usr/bin/env bash
# The wheels benchmarks/gpu_smoke.py needs on a bare CUDA machine that has Python 3.12, torch,
# transformers, peft and accelerate but no network: pydantic (with pydantic-core, annotated-types,
# typing-inspection) and pillow, for CPython 3.12 on manylinux x86_64. About 7 MB: carry the folder along
# (a device run's `carry` takes 64 MiB), then on the GPU machine:
#   pip install --no-index --find-links .cache/gpu_smoke_wheels pydantic pillow
#   python benchmarks/gpu_smoke.py --out benchmarks/results/gpu_smoke.md
# Usage: bash scripts/gpu_smoke_wheels.sh [OUT_DIR]   (default .cache/gpu_smoke_wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.cache/gpu_smoke_wheels}"
mkdir -p "$out"
PIP_CONFIG_FILE=/dev/null python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$out" 'pydantic>=2.10,<3' 'pillow>=11,<14'
ls -1 "$out"
du -sh "$out"
