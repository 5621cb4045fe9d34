"""What one hand-over between two Ray processes costs on this machine, by how long the receiver had waited.

A one-way actor call is timed from the sender's clock at `.remote()` to the receiver's clock when the
method starts (one host, one clock). Before each call the sender stays busy (as a stage that just
finished its work is) and the receiver waits for a set time. On the 2-core machine the latency grows
with that wait: ~0.7 ms after 1 ms, ~2.7 ms after 128 ms (measured while writing this). It is not the
CPUs going to sleep: two low-priority busy loops that kept both CPUs awake left it at 2.1-2.3 ms after
50 ms (a throwaway test).

The same wake costs CPU: a trivial call every 0.2 s costs its receiver about 3 ms of CPU beyond its idle
CPU (`call_cpu_ms`; 2.6-3.6 ms in the runs so far), which on 2 cores is taken from the work when the
stages overlap.

A synchronous GRPO step passes through `hops.SEQUENTIAL_MESSAGES` in a row, most of them to a process
that had waited 100-450 ms (the scorer, the buffer and the feed for almost all of the step). Counting
those at the latency after a 64 ms wait, and the others at the one after 2 ms, gives a lower estimate of
what the messages alone cost per step, whatever the loop does between them; only fewer messages in a
row would lower it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WAIT_MS = (2, 16, 64, 256)  # how long the receiver waits before each call
WAITED_MS = 64  # below the wait of every receiver `hops.SEQUENTIAL_MESSAGES` marks as having waited
BUSY_MS = 2
CALLS = 30  # per wait; the first 3 are left out (the receiver's first calls)


def one_way_ms(wait_ms: tuple[int, ...] = WAIT_MS, calls: int = CALLS) -> dict[str, list[float]]:
    """Milliseconds of each one-way call from this process (busy until it sends) to a fresh actor, by how
    long the actor had waited (call after `ray.init`; keys are the milliseconds as strings, for JSON)."""
    import ray

    @ray.remote(num_cpus=0)
    class Receiver:
        def __init__(self) -> None:
            self.arrived: list[float] = []

        def hit(self) -> None:
            self.arrived.append(time.time())

        def drain(self) -> list[float]:
            out, self.arrived = self.arrived, []
            return out

    receiver = Receiver.remote()
    out: dict[str, list[float]] = {}
    try:
        ray.get(receiver.drain.remote())
        for wait in wait_ms:
            sent = []
            for _ in range(calls):
                until = time.perf_counter() + wait / 1000
                while time.perf_counter() < until:  # busy, as a stage that just did its work
                    pass
                sent.append(time.time())
                receiver.hit.remote()
            time.sleep(0.2)
            arrived = ray.get(receiver.drain.remote())
            out[str(wait)] = [1000 * (b - a) for a, b in zip(sent[3:], arrived[3:])]
    finally:
        ray.kill(receiver)
    return out


def call_cpu_ms(gap_s: float = 0.2, calls: int = 50) -> float:
    """Milliseconds of CPU a trivial call costs the actor that receives it, one call every `gap_s` (so
    the actor waited between them), beyond what the same actor spends idle over the same time (call after
    `ray.init`). Over 50 calls Linux's 10 ms ticks resolve 0.2 ms per call."""
    import psutil
    import ray

    @ray.remote(num_cpus=0)
    class Receiver:
        def pid(self) -> int:
            import os

            return os.getpid()

        def hit(self) -> None:
            return None

    receiver = Receiver.remote()
    try:
        proc = psutil.Process(ray.get(receiver.pid.remote()))
        time.sleep(2.0)  # past the start-up's imports
        cpu = lambda: sum(proc.cpu_times()[:2])  # noqa: E731
        before = cpu()
        time.sleep(gap_s * calls)
        idle = cpu() - before
        before = cpu()
        for _ in range(calls):
            ray.get(receiver.hit.remote())
            time.sleep(gap_s)
        return 1000 * (cpu() - before - idle) / calls
    finally:
        ray.kill(receiver)


@dataclass(frozen=True)
class Floor:
    """A step's messages in a row at this machine's latencies."""

    waited: int  # messages to a process that had waited
    busy: int  # messages to a process busy a moment before
    waited_ms: float  # median latency after a wait of WAITED_MS
    busy_ms: float  # after BUSY_MS

    @property
    def ms(self) -> float:
        return self.waited * self.waited_ms + self.busy * self.busy_ms


def floor(wake_ms: dict[str, list[float]], messages: Sequence[tuple[str, bool]]) -> Floor:
    """The sum of `messages` (name, whether its receiver had waited) at the measured latencies."""
    waited = sum(1 for _, w in messages if w)
    return Floor(waited, len(messages) - waited, statistics.median(wake_ms[str(WAITED_MS)]),
                 statistics.median(wake_ms[str(BUSY_MS)]))


def report_wake(report: Any, wake_ms: dict[str, list[float]], messages: Sequence[tuple[str, bool]]) -> None:
    """The latency by wait, and the step's messages in a row, as tables (and in the report's data)."""
    import common

    report.table(f"One hand-over between two Ray processes on this machine: ms of a one-way actor call from a busy "
                 f"sender, by how long the receiver had waited ({CALLS - 3} calls each; wake.py)",
                 ["receiver waited", "one-way ms"],
                 [[f"{wait} ms", common.summarize(v).fmt()] for wait, v in wake_ms.items()])
    low = floor(wake_ms, messages)
    report.table(f"The one-way messages a synchronous step passes through in a row (`next`; hops.py), at the "
                 f"latency after {WAITED_MS} ms for a receiver that waited (each waited longer), after {BUSY_MS} ms for one "
                 "busy just before",
                 ["#", "message", "receiver", "ms"],
                 [[str(k), m, "waited" if w else "busy", f"{low.waited_ms if w else low.busy_ms:.1f}"]
                  for k, (m, w) in enumerate(messages, start=1)] + [["", "in a row", "", f"{low.ms:.1f}"]])
    report.data["wake_ms"] = wake_ms
