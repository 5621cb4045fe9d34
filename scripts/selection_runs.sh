#!/usr/bin/env bash
# One selection run (one big round, a longer-trained G and R, a token solver stage) per study split:
# runs/selection-s<N> for each seed N given (default 0 1 2). benchmarks/learns_on_cpu.py --only solver
# --runs ... then trains the MedGR² solver on each split's selection (see benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
for s in "${seeds[@]}"; do
  rm -rf "runs/selection-s$s"  # nothing of an older run left beside the new one
  .venv/bin/medgr2 run configs/cpu-tiny.yaml --set "run.name=selection-s$s" --set "run.seed=$s" \
    --set cycle.rounds=1 --set cycle.images_per_round=96 --set cycle.generator_bootstrap_steps=500 \
    --set cycle.rm_answer_steps=800 --set cycle.rm_bootstrap_steps=150 --set solver.sft_steps=10 \
    --set solver.grpo=false --set 'eval.transfer_protocols=[]'
done
