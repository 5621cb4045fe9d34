"""LoopMonitor: a tiny named actor holding the newest `LoopStatus`, so `medgr2 status` can read a live run.

The controller runs in the job's driver process, which other processes cannot call; it pushes a status
snapshot here after every learner step (fire-and-forget, never waited on), and `medgr2 status` finds
this actor by name in the run's namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MONITOR_NAME = "LoopMonitor"


@dataclass(frozen=True)
class PoolStatus:
    """One actor pool: members, how many are started, calls in flight."""

    name: str
    members: int
    ready: int
    in_flight: int
    weight_versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoopStatus:
    """The live state of the asynchronous loop."""

    run: str
    step: int
    steps: int
    version: int
    buffer_depth: int
    buffer_capacity: int
    in_flight_groups: int
    groups_trained: int
    groups_dropped_stale: int
    requests_reissued: int
    reward_mean: float
    samples_per_s: float
    seconds: float
    pools: tuple[PoolStatus, ...] = field(default_factory=tuple)


class LoopMonitor:
    """Holds the last `LoopStatus` pushed by the controller."""

    def __init__(self) -> None:
        self.status: LoopStatus | None = None

    def ready(self) -> bool:
        """Liveness probe."""
        return True

    def push(self, status: LoopStatus) -> None:
        """Replace the held status."""
        self.status = status

    def get(self) -> LoopStatus | None:
        """The newest status, or None before the first step."""
        return self.status
