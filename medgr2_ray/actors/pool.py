"""WorkerPool: the live actors of one autoscaled pool (rollout or scorer), started and stopped by size.

Each actor asks Ray for the pool's resources (`PoolConfig.num_cpus/num_gpus/resources`); an actor that
cannot be placed stays *pending*, which is what makes Ray's autoscaler add a node, and a killed idle
actor frees its node for the autoscaler to remove. Actors are named `<pool>-<n>` with n never reused,
so the dashboard's actor list reads like the design diagram. `loop.autoscale` decides the size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from medgr2_ray.config import PoolConfig
from medgr2_ray.metrics import POOL_SIZE, Metrics


@dataclass
class Member:
    """One actor of a pool: its handle, the ref that resolves once it is placed, and its open calls."""

    name: str
    handle: Any
    ready_ref: Any
    ready: bool = False
    in_flight: int = 0
    info: Any = None  # what the actor's `ready()` returned
    spec_ref: Any = None  # the constructor's spec in the object store, kept for Ray's restarts


@dataclass
class WorkerPool:
    """The live actors of one pool (see the module docstring).

    `actor_cls` must have a `ready()` method (cheap; returns the actor's info) and take one typed spec,
    `make_spec(n)`, as its constructor argument.
    """

    name: str
    actor_cls: type
    config: PoolConfig
    make_spec: Callable[[int], Any]
    # Run calls in the order their arguments become ready, not the order they were sent: a call chained
    # on an unfinished one (score on a generate) must not hold up calls queued behind it.
    out_of_order: bool = False
    members: list[Member] = field(default_factory=list)
    _next_index: int = 0
    _metrics: Metrics = field(default_factory=Metrics)

    def _start_one(self) -> Member:
        cfg = self.config
        remote_cls = ray.remote(self.actor_cls).options(
            name=f"{self.name}-{self._next_index}",
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            resources=dict(cfg.resources) or None,
            max_restarts=cfg.max_restarts,
            max_task_retries=0,  # the controller re-issues failed work itself, exactly once
            allow_out_of_order_execution=self.out_of_order,
        )
        # The spec goes through the object store with a reference this pool keeps: Ray frees an actor's
        # stored constructor arguments once it is created, and a restart after that could not rebuild it.
        spec_ref = ray.put(self.make_spec(self._next_index))
        handle = remote_cls.remote(spec_ref)
        member = Member(f"{self.name}-{self._next_index}", handle, handle.ready.remote(), spec_ref=spec_ref)
        self._next_index += 1
        return member

    def scale_to(self, target: int) -> None:
        """Start or stop actors so that the pool has `target` members (clamped to min/max).

        Shrinking stops pending actors first (they hold no work and block a node request), then idle
        ready ones; an actor with calls in flight is never stopped, so shrinking may take a few rounds.
        """
        target = max(self.config.min_workers, min(self.config.max_workers, target))
        while len(self.members) < target:
            self.members.append(self._start_one())
        removable = sorted(
            (m for m in self.members if m.in_flight == 0), key=lambda m: (m.ready, -self.members.index(m))
        )
        for member in removable[: max(0, len(self.members) - target)]:
            ray.kill(member.handle)
            self.members.remove(member)
        self._metrics.record(POOL_SIZE, len(self.members), pool=self.name)

    def poll_ready(self, timeout_s: float = 0.0) -> list[Member]:
        """Mark members whose actor has (re)started; returns the newly ready ones.

        A member being restarted by Ray is probed again; one that died for good (restarts exhausted) is
        replaced by a new actor, so the pool keeps its size.
        """
        waiting = [m for m in self.members if not m.ready]
        if not waiting:
            return []
        done, _ = ray.wait([m.ready_ref for m in waiting], num_returns=len(waiting), timeout=timeout_s)
        newly = []
        for member in waiting:
            if member.ready_ref not in done:
                continue
            try:
                member.info = ray.get(member.ready_ref)
            except ray.exceptions.ActorDiedError:
                self.discard(member)
                self.members.append(self._start_one())
                continue
            except ray.exceptions.ActorUnavailableError:
                member.ready_ref = member.handle.ready.remote()  # restarting: ask again
                continue
            member.ready = True
            newly.append(member)
        return newly

    def suspect(self, member: Member) -> None:
        """A call on this member failed: take it out of rotation until its `ready()` answers again."""
        if member in self.members and member.ready:
            member.ready = False
            member.ready_ref = member.handle.ready.remote()

    def least_busy(self, max_in_flight: int) -> Member | None:
        """The ready member with the fewest open calls, if it has fewer than `max_in_flight`."""
        ready = [m for m in self.members if m.ready and m.in_flight < max_in_flight]
        return min(ready, key=lambda m: m.in_flight) if ready else None

    def discard(self, member: Member) -> None:
        """Forget a member whose actor died for good (restarts exhausted)."""
        if member in self.members:
            self.members.remove(member)

    @property
    def num_ready(self) -> int:
        """Members that have started."""
        return sum(m.ready for m in self.members)

    def shutdown(self) -> None:
        """Stop every actor of the pool."""
        for member in self.members:
            ray.kill(member.handle)
        self.members.clear()
