"""RolloutBuffer: the bounded, versioned queue of scored groups between the scorers and the learner.

One instance runs as a named Ray actor (`ray.remote(RolloutBuffer)`; the dashboard shows the class name).
Every entry keeps the weight version that produced it; `take` hands the learner the oldest groups whose
staleness (learner version - group version) is within `max_staleness` and drops older ones, counting and
naming every dropped group. The buffer is bounded: a `put` that would exceed the capacity is refused as a
whole with `BufferFull` (the controller's back-pressure should make that impossible, so it is a loud bug,
not a silent drop). A group id is accepted once per run: duplicates are refused and counted, so a
re-issued request can never be trained twice. `save`/`load` persist it (JSON + safetensors, no pickle).
A `take` may name puts it must follow (Ray runs it once they finished): the controller queues a learner
step before its groups exist, and the batch is taken the moment the last of them arrives (`exact`: all
or nothing). Calls run in the order their arguments are ready (a put chained on a score still running
never holds up the calls behind it).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from medgr2_ray.actors.persist import load_messages, save_messages
from medgr2_ray.metrics import BUFFER_DEPTH, GROUPS_DROPPED_STALE, Metrics
from medgr2_ray.types import ScoredGroup, TrainBatch
from medgr2_ray.actors.info import actor_info, flush_spans, record_span
from medgr2_ray.messages import ActorInfo, BufferSnapshot, BufferStats, PutReceipt, TakeResult


class BufferFull(RuntimeError):
    """A put would exceed the buffer's capacity (the producer ignored back-pressure)."""


class ShortBatch(RuntimeError):
    """An exact take found fewer fresh groups than asked for (some it waited for were refused)."""


def _uniform(group: ScoredGroup) -> bool:
    """All rewards equal (finite ones: a NaN group is the learner's to drop and count)."""
    rewards = np.asarray(group.rewards, dtype=np.float64)
    return bool(rewards.size > 0 and np.isfinite(rewards).all() and np.ptp(rewards) == 0.0)


class RolloutBuffer:
    """Bounded FIFO of `ScoredGroup`s tagged with weight versions (see the module docstring)."""

    def __init__(self, capacity: int, drop_uniform: bool = False, monitor: Any = None) -> None:
        if capacity < 1:
            raise ValueError(f"RolloutBuffer capacity must be >= 1, got {capacity} (grpo.buffer_size)")
        self.capacity = capacity
        self.drop_uniform = drop_uniform
        self._uniform: list[str] = []
        self._queue: deque[ScoredGroup] = deque()
        self._seen: set[str] = set()
        self._taken = 0
        self._dropped_stale: list[str] = []
        self._duplicates: list[str] = []
        self._seq = 0
        self._metrics = Metrics()
        self._monitor = monitor  # the run's LoopMonitor: put and take spans for the timeline, if any
        self._name = actor_info(0).name or "RolloutBuffer"

    def ready(self) -> ActorInfo:
        """Liveness probe: a new pid after a restart tells the controller the buffer came back empty."""
        flush_spans()  # the spans not yet sent (the timeline reads them next)
        return actor_info(len(self._queue))

    def _snapshot(self) -> BufferSnapshot:
        self._seq += 1
        return BufferSnapshot(self._seq, tuple(g.weight_version for g in self._queue))

    def put(self, groups: list[ScoredGroup]) -> PutReceipt:
        """Append groups (all or none); refuse ids seen before; raise `BufferFull` past capacity.

        With `drop_uniform` (GRPO's dynamic sampling, as in DAPO) a group whose rewards are all equal is
        refused and counted here, before it takes a place: its advantages would all be zero, and the
        controller keeps generating until a step's batch is full of groups that carry signal."""
        start = time.time()
        uniform = tuple(g.group_id for g in groups if self.drop_uniform and g.group_id not in self._seen
                        and _uniform(g))
        self._uniform.extend(uniform)
        self._seen.update(uniform)
        fresh = [g for g in groups if g.group_id not in self._seen]
        dup_ids = tuple(g.group_id for g in groups if g.group_id in self._seen and g.group_id not in uniform)
        if len({g.group_id for g in fresh}) != len(fresh):
            raise ValueError("RolloutBuffer.put: one call holds the same group id twice")
        if len(self._queue) + len(fresh) > self.capacity:
            raise BufferFull(
                f"RolloutBuffer holds {len(self._queue)}/{self.capacity}; refusing {len(fresh)} more groups "
                "(the producer must wait for the learner: raise grpo.buffer_size or lower the pool size)"
            )
        self._queue.extend(fresh)
        self._seen.update(g.group_id for g in fresh)
        self._duplicates.extend(dup_ids)
        self._metrics.record(BUFFER_DEPTH, len(self._queue))
        receipt = PutReceipt(tuple(g.weight_version for g in fresh), dup_ids, len(self._queue), self._snapshot(),
                             uniform, tuple(g.group_id for g in fresh))
        record_span(self._monitor, self._name, "put", start)
        return receipt

    def take(self, n: int, learner_version: int, max_staleness: int, *after: Any, exact: bool = False) -> TakeResult:
        """The oldest `n` fresh groups (fewer if fewer exist), after dropping every too-stale one.

        The batch is ordered by group id, not arrival, so that which actor finished first cannot change
        the learner's summation order (the synchronous mode is then reproducible run to run).

        `after`: the refs of puts this take must follow. Ray runs the take only once they have finished,
        so the controller can queue a learner step before its groups exist, on the puts that will bring
        them (no round trip through the controller between the last put and the take). `exact`: fewer
        than `n` fresh groups (a put it waited for was refused) raises `ShortBatch` and takes nothing.
        """
        start = time.time()
        fresh = sum(1 for g in self._queue if learner_version - g.weight_version <= max_staleness)
        if exact and fresh < n:
            raise ShortBatch(f"RolloutBuffer holds {fresh} fresh groups, {n} were asked for exactly")
        dropped = [g.group_id for g in self._queue if learner_version - g.weight_version > max_staleness]
        if dropped:
            self._queue = deque(g for g in self._queue if learner_version - g.weight_version <= max_staleness)
            self._dropped_stale.extend(dropped)
            self._metrics.record(GROUPS_DROPPED_STALE, len(dropped))
        chosen = [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
        self._taken += len(chosen)
        self._metrics.record(BUFFER_DEPTH, len(self._queue))
        chosen.sort(key=lambda g: g.group_id)
        result = TakeResult(TrainBatch(tuple(chosen), learner_version), tuple(dropped), self._snapshot())
        record_span(self._monitor, self._name, "take", start)
        return result

    def stats(self) -> BufferStats:
        """Current depth and versions, and run-long counters."""
        return BufferStats(
            capacity=self.capacity,
            depth=len(self._queue),
            versions=tuple(g.weight_version for g in self._queue),
            accepted=len(self._seen),
            taken=self._taken,
            dropped_stale=len(self._dropped_stale),
            duplicates=len(self._duplicates),
        )

    def queued_ids(self) -> tuple[str, ...]:
        """Ids of the groups waiting in the buffer, oldest first."""
        return tuple(g.group_id for g in self._queue)

    def dropped_ids(self) -> tuple[str, ...]:
        """Every group id dropped as stale so far (for the no-loss accounting)."""
        return tuple(self._dropped_stale)

    def save(self, path: str) -> str:
        """Persist contents and counters to `path`.json/.safetensors; returns `path`."""
        save_messages(path, {
            "capacity": self.capacity,
            "queue": list(self._queue),
            "seen": sorted(self._seen),
            "taken": self._taken,
            "dropped_stale": list(self._dropped_stale),
            "duplicates": list(self._duplicates),
            "uniform": list(self._uniform),
        })
        return path

    def load(self, path: str) -> BufferStats:
        """Replace the state with what `save(path)` wrote (the capacity stays this instance's)."""
        state = load_messages(Path(path))
        queue = list(state["queue"])
        if len(queue) > self.capacity:
            raise BufferFull(f"'{path}' holds {len(queue)} groups but grpo.buffer_size is {self.capacity}")
        self._queue = deque(queue)
        self._seen = set(state["seen"])
        self._taken = int(state["taken"])
        self._dropped_stale = list(state["dropped_stale"])
        self._duplicates = list(state["duplicates"])
        self._uniform = list(state.get("uniform", []))
        return self.stats()
