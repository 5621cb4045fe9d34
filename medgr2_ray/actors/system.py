"""ActorSystem: build (and stop) the long-lived actors of one GRPO loop from the typed config.

The resource each actor asks Ray for comes from the config only: `rollout_pool`/`scorer_pool`
(`num_cpus`, `num_gpus`, custom `resources`, `max_restarts`) and `learner` (`num_ranks`, per-rank CPUs
and GPUs, packed by a placement group). Names carry a prefix so two runs can share a namespace; with
the default empty prefix the dashboard's actor list reads `policy-rollout-0`, `scorer-0`,
`PolicyLearner-rank0`, `RolloutBuffer`, `LoopMonitor`, like the design diagram.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.actors.buffer import RolloutBuffer
from medgr2_ray.actors.learner import LearnerGroup
from medgr2_ray.actors.monitor import MONITOR_NAME, LoopMonitor
from medgr2_ray.actors.rollout import RolloutActor
from medgr2_ray.actors.scorer import ScorerActor
from medgr2_ray.config import Config
from medgr2_ray.actors.pool import WorkerPool


@dataclass
class ActorSystem:
    """Handles on every actor of the loop."""

    rollout: WorkerPool
    scorer: WorkerPool
    learner: LearnerGroup
    buffer: Any  # ActorHandle[RolloutBuffer]
    monitor: Any  # ActorHandle[LoopMonitor]

    @classmethod
    def build(cls, cfg: Config, policy_dir: str | Path, reward_dir: str | Path | None = None,
              prefix: str = "") -> "ActorSystem":
        """Start the pools at `min_workers`, the learner ranks, the buffer and the monitor."""
        threads, seed = cfg.run.torch_threads, cfg.run.seed
        rollout = WorkerPool(
            f"{prefix}policy-rollout", RolloutActor, cfg.rollout_pool,
            # Each actor gets its own engine seed, so two actors never draw the same default samples.
            lambda i: (f"{prefix}policy-rollout", str(policy_dir), cfg.policy, cfg.engine, seed + 1000 * (i + 1), threads),
        )
        scorer = WorkerPool(
            f"{prefix}scorer", ScorerActor, cfg.scorer_pool,
            lambda i: (None if reward_dir is None else str(reward_dir), cfg.reward_model, cfg.reward,
                       cfg.learner.micro_batch_size, seed, threads),
        )
        buffer = ray.remote(RolloutBuffer).options(name=f"{prefix}RolloutBuffer", num_cpus=0).remote(
            cfg.grpo.buffer_size
        )
        monitor = ray.remote(LoopMonitor).options(name=f"{prefix}{MONITOR_NAME}", num_cpus=0).remote()
        rollout.scale_to(cfg.rollout_pool.min_workers)
        scorer.scale_to(cfg.scorer_pool.min_workers)
        learner = LearnerGroup(
            policy_dir, cfg.policy, cfg.learner, cfg.grpo, seed, name=f"{prefix}PolicyLearner", torch_threads=threads
        )
        return cls(rollout, scorer, learner, buffer, monitor)

    def shutdown(self) -> None:
        """Stop every actor (the pools, the learner ranks and their placement group, buffer, monitor)."""
        self.rollout.shutdown()
        self.scorer.shutdown()
        self.learner.shutdown()
        ray.kill(self.buffer)
        ray.kill(self.monitor)
