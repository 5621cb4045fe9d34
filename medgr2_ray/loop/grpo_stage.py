"""Solver stage 2: GRPO on the continuous asynchronous loop, with MedGR²'s combined reward.

Starts the loop's actors (policy rollout pool, scorer pool holding the evolved reward model, learner
ranks, buffer, monitor) from the SFT'd policy, runs `grpo.steps` steps of `controller.Controller`
(checkpointing every `loop.checkpoint_every` steps; `resume` continues from the newest checkpoint),
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
from medgr2_ray.loop.stages import solver_requests
from medgr2_ray.types import Sample


def run_grpo(cfg: Config, policy_dir: Path, reward_dir: Path | None, samples: Sequence[Sample],
             lookup: Callable[[str], np.ndarray], run_dir: Path, progress: Progress, resume: bool = False) -> Path:
    """GRPO from `policy_dir`; returns the directory of the trained policy."""
    system = ActorSystem.build(cfg, policy_dir, reward_dir if cfg.reward.alpha > 0 else None)
    checkpoint = run_dir / "checkpoints" / "grpo"
    try:
        controller = Controller(cfg, system, solver_requests(samples, lookup), run_dir)
        if resume and (checkpoint / "controller.json").is_file():
            controller.resume(checkpoint)
        every = cfg.loop.checkpoint_every or cfg.grpo.steps
        while controller.steps_done < cfg.grpo.steps:
            controller.run(min(cfg.grpo.steps, controller.steps_done + every))
            controller.checkpoint(checkpoint)
            progress("GRPO", controller.steps_done, cfg.grpo.steps)
        controller.close()
        return Path(system.learner.save_pretrained(run_dir / "models" / "solver_grpo"))
    finally:
        system.shutdown()
