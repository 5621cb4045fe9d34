"""Autoscaling decisions (pure, by hand) and the WorkerPool on the real session cluster."""

from __future__ import annotations

import ray

from medgr2_ray.config import PoolConfig
from medgr2_ray.actors.pool import WorkerPool
from medgr2_ray.loop.autoscale import ScalePolicy, ScaleSignals, ScaleState, decide

POLICY = ScalePolicy(min_workers=1, max_workers=3, wait_up_s=0.5, fill_down=0.9, patience=2)
WAIT = ScaleSignals(learner_wait_s=2.0, buffer_fill=0.1)
FULL = ScaleSignals(learner_wait_s=0.0, buffer_fill=0.95)
CALM = ScaleSignals(learner_wait_s=0.1, buffer_fill=0.5)


def run(signals: list[ScaleSignals], start: int = 1) -> list[int]:
    state, targets = ScaleState(start), []
    for signal in signals:
        state = decide(state, signal, POLICY)
        targets.append(state.target)
    return targets


def test_grows_only_after_patience_long_waits_and_clamps_at_max() -> None:
    assert run([WAIT] * 6) == [1, 2, 2, 3, 3, 3]


def test_shrinks_only_when_the_buffer_stays_full_and_clamps_at_min() -> None:
    assert run([FULL] * 6, start=3) == [3, 2, 2, 1, 1, 1]


def test_an_interrupted_streak_starts_over() -> None:
    assert run([WAIT, CALM, WAIT, CALM, FULL, CALM, FULL]) == [1] * 7


def test_waiting_learner_wins_over_a_full_buffer() -> None:
    # both at once means the buffer is full of data the learner cannot use (stale): do not shrink
    both = ScaleSignals(learner_wait_s=2.0, buffer_fill=1.0)
    assert run([both, both]) == [1, 2]


def test_worker_pool_starts_names_and_stops_actors(ray_cluster: None) -> None:
    class Idle:  # defined here so Ray ships it by value (workers cannot import test modules)
        def __init__(self, index: int) -> None:
            self.index = index

        def ready(self) -> int:
            return self.index

    cfg = PoolConfig(min_workers=1, max_workers=3, num_cpus=0, max_restarts=0)
    pool = WorkerPool("probe-pool", Idle, cfg, lambda i: i)
    pool.scale_to(5)  # clamped to max_workers
    assert len(pool.members) == 3
    for _ in range(120):
        pool.poll_ready(1.0)
        if pool.num_ready == 3:
            break
    assert sorted(m.info for m in pool.members) == [0, 1, 2]
    assert ray.get(ray.get_actor("probe-pool-1").ready.remote()) == 1  # named like the dashboard shows
    busy = pool.members[0]
    busy.in_flight = 1
    pool.scale_to(0)  # clamped to min_workers=1, and the busy actor is never stopped
    assert pool.members == [busy]
    pool.scale_to(2)
    assert [m.name for m in pool.members] == ["probe-pool-0", "probe-pool-3"]  # names never reused
    pool.shutdown()
