"""`medgr2 run` at the default verbosity, as a person runs it (its own process, its own local Ray):
the terminal holds our progress bars and summary and the Ray dashboard's URL, never Ray's or Ray Train's
INFO lines, the token-auth notice, worker output or `core_worker` error lines; those go to the run's
`logs/ray.log` instead. The tiny models are built in this very process (a fresh cache), where
transformers' "Writing model shards" bars would show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TINY_RUN = [
    "--set", "cycle.rounds=1", "--set", "cycle.images_per_round=3", "--set", "cycle.strategies=[direct]",
    "--set", "cycle.max_new_tokens=48", "--set", "cycle.generator_bootstrap_steps=3", "--set", "cycle.rm_bootstrap_steps=3",
    "--set", "cycle.rm_answer_steps=2", "--set", "cycle.rm_refresh_steps=2", "--set", "cycle.generator_rft_steps=2",
    "--set", "cycle.batch_size=4", "--set", "solver.sft_steps=20", "--set", "solver.sft_batch_size=4",
    "--set", "solver.eval_per_modality=2", "--set", "grpo.steps=2", "--set", "grpo.prompts_per_step=2",
    "--set", "grpo.group_size=2", "--set", "grpo.max_new_tokens=8",
]
NOISE = (" INFO ", "INFO:", "core_worker", "Token authentication", "Writing model shards", "pid=", "TrainController",
         "RayTrainWorker", "Traceback", "(raylet)")


def test_the_default_output_is_ours_and_names_the_dashboard(tmp_path: Path, tiny_cache: Path) -> None:
    from medgr2_ray.data.seedpool import ensure_seed_pool

    pool = ensure_seed_pool(tiny_cache)  # the session's pool; the models are built fresh by the run
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-c", "import sys; from medgr2_ray.cli import main; sys.exit(main())", "run",
               str(REPO / "configs" / "cpu-tiny.yaml"), "--set", f"run.root={tmp_path}", "--set", "run.name=quiet",
               "--set", f"data.pool={pool}", "--set", f"data.cache_dir={tmp_path / 'cache'}", *TINY_RUN]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "\n".join(noisy[:20])
    assert "Ray dashboard: http://127.0.0.1:" in done.stdout
    assert "wall time per stage: " in done.stdout and "held-out accuracy:" in done.stdout
    log = (tmp_path / "quiet" / "logs" / "ray.log").read_text()
    assert "Started a local Ray instance" in log and "TrainController" in log  # moved there, not dropped
