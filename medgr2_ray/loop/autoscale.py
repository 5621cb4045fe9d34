"""Autoscaling of rollout pools: a pure decision function and the driver-side autoscaler that applies it.

`decide` turns two signals into a target pool size between `min_workers` and `max_workers`: the learner
waiting for data (generation is the bottleneck: grow by one) and the buffer staying full (generation
outruns the learner: shrink by one). Both must persist for `patience` observations, so one slow step or one
burst does not make the pool oscillate. It is a pure function over frozen dataclasses, tested by hand.

`PoolAutoscaler` feeds the controller's observations to `decide` and resizes an `actors.pool.WorkerPool`.
The pool's actors ask Ray for the pool's resources, so a grown pool with no room leaves actors pending,
which makes Ray's autoscaler add nodes; a shrunk pool frees nodes for it to remove.
"""

from __future__ import annotations

from dataclasses import dataclass

from medgr2_ray.actors.pool import WorkerPool
from medgr2_ray.config import LoopConfig, PoolConfig


@dataclass(frozen=True)
class ScaleSignals:
    """What the controller observed since the last decision."""

    learner_wait_s: float  # seconds the learner last waited for a step's data
    buffer_fill: float  # buffered groups / capacity, in [0, 1]


@dataclass(frozen=True)
class ScalePolicy:
    """Bounds and thresholds (from PoolConfig and LoopConfig)."""

    min_workers: int
    max_workers: int
    wait_up_s: float
    fill_down: float
    patience: int = 2


@dataclass(frozen=True)
class ScaleState:
    """How many consecutive observations each signal has held (the only memory `decide` needs)."""

    target: int
    wait_streak: int = 0
    full_streak: int = 0


def decide(state: ScaleState, signals: ScaleSignals, policy: ScalePolicy) -> ScaleState:
    """The next target size: +1 after `patience` long waits, -1 after `patience` full buffers, clamped."""
    waiting = signals.learner_wait_s > policy.wait_up_s
    full = signals.buffer_fill >= policy.fill_down
    wait_streak = state.wait_streak + 1 if waiting else 0
    full_streak = state.full_streak + 1 if full and not waiting else 0
    target = state.target
    if wait_streak >= policy.patience:
        target, wait_streak = target + 1, 0
    elif full_streak >= policy.patience:
        target, full_streak = target - 1, 0
    target = max(policy.min_workers, min(policy.max_workers, target))
    return ScaleState(target, wait_streak, full_streak)


class PoolAutoscaler:
    """Applies `decide` to one pool after each observation."""

    def __init__(self, pool: WorkerPool, pool_cfg: PoolConfig, loop_cfg: LoopConfig) -> None:
        self.pool = pool
        self.policy = ScalePolicy(
            pool_cfg.min_workers, pool_cfg.max_workers, loop_cfg.scale_up_wait_s, loop_cfg.scale_down_fill,
            loop_cfg.scale_patience,
        )
        self.state = ScaleState(target=max(pool_cfg.min_workers, len(pool.members)))

    def observe(self, signals: ScaleSignals) -> int:
        """Update the target from `signals`, resize the pool, return the target."""
        self.state = decide(self.state, signals, self.policy)
        self.pool.scale_to(self.state.target)
        return self.state.target


__all__ = ["PoolAutoscaler", "ScalePolicy", "ScaleSignals", "ScaleState", "WorkerPool", "decide"]
