#!/usr/bin/env bash
# One selection run (one big round, a longer-trained G and R, a token solver stage) per study split:
# runs/$NAME-s<N> for each seed N given (default 0 1 2). benchmarks/learns_on_cpu.py --only solver
# (or --only selection) --runs ... then trains solvers on each split's selection (benchmarks/README.md).
# The round's size comes from the environment: IMAGES_PER_ROUND (default 96; more than the split's
# training images means all of them), SAMPLES_PER_PROMPT (default 2), TOP_K (default 48), NAME
# (default selection).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
name="${NAME:-selection}"
for s in "${seeds[@]}"; do
  rm -rf "runs/$name-s$s"  # nothing of an older run left beside the new one
  .venv/bin/medgr2 run configs/cpu-tiny.yaml --set "run.name=$name-s$s" --set "run.seed=$s" \
    --set cycle.rounds=1 --set "cycle.images_per_round=${IMAGES_PER_ROUND:-96}" \
    --set "cycle.samples_per_prompt=${SAMPLES_PER_PROMPT:-2}" --set "selection.top_k=${TOP_K:-48}" \
    --set cycle.generator_bootstrap_steps=500 --set cycle.rm_answer_steps=800 --set cycle.rm_bootstrap_steps=150 \
    --set solver.sft_steps=10 --set solver.grpo=false --set 'eval.transfer_protocols=[]'
done
