"""LoopMonitor: a tiny named actor holding the newest `LoopStatus`, so `medgr2 status` can read a live run.

The controller runs in the job's driver process, which other processes cannot call; it pushes a status
snapshot here after every learner step (fire-and-forget, never waited on), and `medgr2 status` finds
this actor by name in the run's namespace.
"""

from __future__ import annotations

from medgr2_ray.messages import LoopStatus

MONITOR_NAME = "LoopMonitor"






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
