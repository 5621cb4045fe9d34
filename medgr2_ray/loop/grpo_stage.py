"""Solver stage 2: GRPO on the continuous asynchronous loop, with MedGR²'s combined reward.

Starts the loop's actors (policy rollout pool, scorer pool holding the evolved reward model, learner
ranks, buffer, monitor) from the SFT'd policy, runs `grpo.steps` steps of `controller.Controller`
(the controller checkpoints every `loop.checkpoint_every` steps; `resume` continues from the newest),
and writes the final policy as a model directory for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.config import Config
from medgr2_ray.loop.controller import Controller
from medgr2_ray.loop.rounds import Progress
from medgr2_ray.algo.requests import solver_requests
from medgr2_ray.types import Sample


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest `checkpoints/step_*` directory the controller wrote, if any."""
    found = sorted((run_dir / "checkpoints").glob("step_*"))
    return found[-1] if found else None


def stage_config(cfg: Config) -> Config:
    """The config the GRPO stage's actors get: `grpo.lr`, when set, replaces `learner.lr` (the learner
    section keeps serving SFT and the rounds with its own rate)."""
    if cfg.grpo.lr is None:
        return cfg
    return cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"lr": cfg.grpo.lr})})


def run_grpo(cfg: Config, policy_dir: Path, reward_dir: Path | None, samples: Sequence[Sample],
             lookup: Callable[[str], np.ndarray], run_dir: Path, progress: Progress, resume: bool = False) -> Path:
    """GRPO from `policy_dir`; returns the directory of the trained policy."""
    cfg = stage_config(cfg)
    system = ActorSystem.build(cfg, policy_dir, reward_dir if cfg.reward.alpha > 0 else None)
    try:
        # The controller checkpoints itself every `loop.checkpoint_every` steps into checkpoints/step_N.
        controller = Controller(cfg, system, solver_requests(samples, lookup), run_dir)
        latest = latest_checkpoint(run_dir) if resume else None
        if latest is not None:
            controller.resume(latest)
        progress("GRPO", controller.steps_done, cfg.grpo.steps)
        # One call for all steps: the loop launches generation ahead of the learner across step
        # boundaries, which it cannot do when driven one step at a time.
        controller.run(cfg.grpo.steps)
        progress("GRPO", controller.steps_done, cfg.grpo.steps)
        controller.close()
        return Path(system.learner.save_pretrained(run_dir / "models" / "solver_grpo"))
    finally:
        system.shutdown()
