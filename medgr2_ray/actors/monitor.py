"""LoopMonitor: a tiny named actor holding the newest status and the busy spans of the run's actors.

The controller runs in the job's driver process, which other processes cannot call; it pushes a status
snapshot here as the run goes (fire-and-forget, never waited on) — a `FlywheelStatus` during the whole
cycle, a `LoopStatus` from a bare GRPO loop — and `medgr2 status` finds this actor by name in the run's
namespace. Actors report what they were busy with (`Span`s); the controller drains them into the run's
`timeline.jsonl`, which the report draws.
"""

from __future__ import annotations

from medgr2_ray.messages import FlywheelStatus, LoopStatus, Span

MONITOR_NAME = "LoopMonitor"
MAX_SPANS = 200_000  # a bound, so a run nobody drains cannot grow the monitor without limit


class LoopMonitor:
    """Holds the last status pushed by the controller and the spans not yet drained."""

    def __init__(self) -> None:
        self.status: FlywheelStatus | LoopStatus | None = None
        self._spans: list[Span] = []
        self.dropped_spans = 0

    def ready(self) -> bool:
        """Liveness probe."""
        return True

    def push(self, status: FlywheelStatus | LoopStatus) -> None:
        """Replace the held status."""
        self.status = status

    def get(self) -> FlywheelStatus | LoopStatus | None:
        """The newest status, or None before the first one."""
        return self.status

    def spans(self, spans: list[Span]) -> None:
        """Record busy spans (beyond `MAX_SPANS` undrained ones, new spans are counted and dropped)."""
        room = MAX_SPANS - len(self._spans)
        self._spans.extend(spans[:max(0, room)])
        self.dropped_spans += max(0, len(spans) - max(0, room))

    def drain_spans(self) -> list[Span]:
        """Every span recorded since the last drain."""
        out, self._spans = self._spans, []
        return out
