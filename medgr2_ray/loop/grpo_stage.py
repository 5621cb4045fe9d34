"""Solver stage 2: GRPO on the continuous asynchronous loop, with MedGR²'s combined reward.

`grpo_on` runs it on an actor system that already lives (the whole cycle's: P's learner goes on from its
SFT, the scorer pool holds R's newest weights): the policy pool starts, `controller.Controller` runs
`grpo.steps` steps (checkpointing every `loop.checkpoint_every` steps; `resume` continues from the
newest), and the final policy is written as a model directory for evaluation. `run_grpo` is the bare
GRPO job (`jobs/grpo_async.py`): it builds its own system around a policy and a reward model directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.actors.persist import load_messages
from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.algo.requests import solver_requests
from medgr2_ray.config import Config, LearnerConfig
from medgr2_ray.data.store import ImagePool
from medgr2_ray.loop.controller import Controller
from medgr2_ray.loop.flywheel import Progress
from medgr2_ray.messages import GRPOAccounting, Span
from medgr2_ray.metrics import set_aside_records
from medgr2_ray.types import Sample


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest `checkpoints/step_*` directory the controller wrote, if any."""
    found = sorted((run_dir / "checkpoints").glob("step_*"))
    return found[-1] if found else None


def set_aside_grpo_redone(run_dir: Path) -> int:
    """Before a resumed GRPO stage logs its steps again: the killed run's records of the steps past the
    newest checkpoint (all of them when there is none) are moved from `metrics.jsonl` to
    `metrics.redone.jsonl`, so the log holds one record per GRPO step. Call it before any `RunLog` of the
    run is opened (the rewrite replaces the file). Returns how many were moved."""
    latest = latest_checkpoint(run_dir)
    done = int(load_messages(latest / "controller")["steps_done"]) if latest is not None else 0
    return set_aside_records(run_dir, lambda r: r.get("stage") == "grpo" and int(r.get("step", 0)) > done)


def grpo_learner(cfg: Config) -> LearnerConfig:
    """The learner settings of the GRPO stage: `grpo.lr`, when set, replaces `learner.lr` (the learner
    section keeps serving SFT and the rounds with its own rate)."""
    return cfg.learner if cfg.grpo.lr is None else cfg.learner.model_copy(update={"lr": cfg.grpo.lr})


def stage_config(cfg: Config) -> Config:
    """The whole config as the GRPO stage sees it (`grpo_learner` in place of `learner`; `cfg` itself when
    `grpo.lr` is unset)."""
    return cfg if cfg.grpo.lr is None else cfg.model_copy(update={"learner": grpo_learner(cfg)})


@dataclass(frozen=True)
class GRPOResult:
    """The trained policy's directory and where every request of the loop went."""

    model_dir: Path
    accounting: GRPOAccounting


def grpo_on(cfg: Config, system: ActorSystem, samples: Sequence[Sample], run_dir: Path, progress: Progress,
            resume: bool = False, spans: list[Span] | None = None) -> GRPOResult:
    """GRPO on `system`'s learner, policy pool and scorer pool; writes `grpo_accounting.json`."""
    system.rollout.scale_to(cfg.rollout_pool.min_workers)
    controller = Controller(stage_config(cfg), system, solver_requests(samples, None), run_dir)
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        controller.resume(latest)
    progress("GRPO", controller.steps_done, cfg.grpo.steps)
    # One call for all steps: the loop launches generation ahead of the learner across step boundaries.
    controller.run(cfg.grpo.steps, lambda done: progress("GRPO", done, cfg.grpo.steps))
    controller.close()
    if spans is not None:
        spans.extend(controller.spans)
    accounting = controller.accounting()
    (run_dir / "grpo_accounting.json").write_text(json.dumps(asdict(accounting)))
    return GRPOResult(Path(system.learner.save_pretrained(run_dir / "models" / "solver_grpo")), accounting)


def run_grpo(cfg: Config, policy_dir: Path, reward_dir: Path | None, samples: Sequence[Sample], pool: ImagePool,
             run_dir: Path, progress: Progress, resume: bool = False) -> Path:
    """The bare GRPO job from `policy_dir`; returns the directory of the trained policy."""
    if resume:
        set_aside_grpo_redone(run_dir)
    needed = {s.image_id for s in samples}
    images: dict[str, Any] = {i.image_id: ray.put(pool.read_rgb(i)) for i in pool.images if i.image_id in needed}
    system = ActorSystem.build(stage_config(cfg), policy_dir, reward_dir, storage=run_dir / "ray_train", images=images)
    try:
        return grpo_on(cfg, system, samples, run_dir, progress, resume).model_dir
    finally:
        system.shutdown()
