"""A resumed GRPO stage goes on from its newest checkpoint and logs the steps after it again: the killed
run's records of those steps move to `metrics.redone.jsonl`, so `metrics.jsonl` holds one record per
step and nothing is deleted (this once logged every GRPO step past the checkpoint twice)."""

from __future__ import annotations

import json
from pathlib import Path

from medgr2_ray.actors.persist import save_messages
from medgr2_ray.loop.grpo_stage import set_aside_grpo_redone
from medgr2_ray.metrics import RunLog, read_run_log


def _killed_run(run_dir: Path, checkpoint_at: int | None) -> None:
    """A run killed after logging GRPO steps 1..5, with its newest checkpoint at `checkpoint_at`."""
    with RunLog(run_dir) as log:
        log.log(3, {"kept": 1.0}, "data")
        log.log(7, {"loss": 0.5}, "solver_sft")
        for step in range(1, 6):
            log.log(step, {"reward": float(step)})
    if checkpoint_at is not None:
        save_messages(run_dir / "checkpoints" / f"step_{checkpoint_at:06d}" / "controller", {"steps_done": checkpoint_at})


def test_steps_past_the_newest_checkpoint_are_set_aside_once(tmp_path: Path) -> None:
    _killed_run(tmp_path, 3)
    assert set_aside_grpo_redone(tmp_path) == 2
    kept = read_run_log(tmp_path)
    assert [r["step"] for r in kept if r["stage"] == "grpo"] == [1, 2, 3]
    assert {r["stage"] for r in kept} == {"data", "solver_sft", "grpo"}  # other stages are untouched
    aside = [json.loads(line) for line in (tmp_path / "metrics.redone.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in aside] == [("grpo", 4), ("grpo", 5)]
    assert set_aside_grpo_redone(tmp_path) == 0  # a second resume moves nothing more


def test_without_a_checkpoint_every_grpo_step_is_redone(tmp_path: Path) -> None:
    _killed_run(tmp_path, None)
    assert set_aside_grpo_redone(tmp_path) == 5
    assert [r["stage"] for r in read_run_log(tmp_path)] == ["data", "solver_sft"]
