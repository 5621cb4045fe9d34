#!/usr/bin/env bash
# Create .venv (if missing) and install medgr2_ray with its dev and deepspeed extras.
# torch==2.13.0 goes in first: it is the local CPU wheel; a bare "torch" would pull a multi-GB CUDA build.
# DeepSpeed installs with DS_BUILD_OPS=0 (no op compiled at install); its tests run on gloo with no
# JIT-built op either (learner/strategy.py turns the CPU shared-memory all-reduce off).
# Idempotent and fast on a second run: a stamp records the hash of pyproject.toml that was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then PY=$(command -v python3.11 || command -v python3); fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.medgr2-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
  DS_BUILD_OPS=0 .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,deepspeed]'
  echo "$want" > "$stamp"
fi
# The seed pool's optional real volumes (Debian's head CT and brain MR): downloaded once, SHA-256
# checked; without network the pool builds without them and its card says so.
.venv/bin/medgr2 data fetch-debian || true
