"""LearnerFeed: the work queue between the controller and one learner hosted by Ray Train.

The controller `submit`s typed work items (`messages.Work`: a training step whose batch is an object
ref, publish, save, checkpoint, stop); every rank of the learner's worker group pulls item i with
`next(rank, i)`, runs it (collectives stay in lock-step because all ranks run the same items in the same
order) and reports a `WorkDone` with `complete`. The controller waits on `result(i)`, an object ref that
resolves once every rank has reported, so it can `ray.wait` on learner steps like on any other call;
`run(i, work)` is both in one call (one message, no answer to wait for before the result's ref exists).
The caller numbers its items itself (0, 1, 2, ...): it never waits for the feed to hand out an index,
and since an async actor may run calls out of order, the index, not the arrival order, places an item.

Restarts. The feed outlives the learner's worker group. Every few items the group writes a checkpoint
and tells the feed where (`covered`); when Ray Train restarts a dead group (`FailureConfig`), the new
workers load that checkpoint (`start` names it), ask again from the first item it does not cover, get the
very same items (their batch refs are held here), and redo them. Results already reported stay as they
were (first report wins), so a redone step never counts twice; only a publish is taken again, because the
weights the dead worker published died with it. The feed, not Ray Train, keeps the checkpoint's path:
Ray Train registers a reported checkpoint only when its controller next polls the worker, so a worker
killed right after reporting one came back without it (seen here), asking for items already forgotten.

Versions. A restarted learner must never publish a version number it published before with other
weights, so `publish` keeps the newest version here and `floor_version` tells a restarted learner to
continue above it (versions only grow, across any number of restarts).
"""

from __future__ import annotations

import asyncio
import time

from medgr2_ray.messages import FeedStart, FeedStatus, Work, WorkDone
from medgr2_ray.types import WeightVersion


class LearnerFeed:
    """Work queue, results and newest weights of one learner (see the module docstring)."""

    def __init__(self, name: str, world_size: int) -> None:
        self.name, self.world_size = name, world_size
        self._work: dict[int, Work] = {}
        self._done: dict[int, dict[int, WorkDone]] = {}
        self._next = 0
        self._covered = 0  # items below this index are inside a checkpoint: never redone
        self._latest: WeightVersion | None = None
        self._starts = 0
        self._pid = 0
        self._checkpoint: str | None = None  # the newest checkpoint's directory (covers items < _covered)
        self._waiting_since: float | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ controller side
    def submit(self, work: Work, index: int | None = None) -> int:
        """Queue one item at `index` (None: the next free one); returns its index."""
        index = self._next if index is None else index
        if index < self._covered or index in self._work or index in self._done:
            raise ValueError(f"{self.name}: item {index} was submitted before")
        self._work[index] = work
        self._next = max(self._next, index + 1)
        self._notify()
        return index

    async def run(self, index: int, work: Work) -> list[WorkDone]:
        """`submit(work, index)` and `result(index)` in one call."""
        self.submit(work, index)
        return await self.result(index)

    async def result(self, index: int) -> list[WorkDone]:
        """Every rank's report of item `index` (rank order), once all have reported."""
        while len(self._done.get(index, {})) < self.world_size:
            await self._changed.wait()
        return [self._done[index][r] for r in range(self.world_size)]

    def latest(self) -> WeightVersion | None:
        """The newest published weights (None before the first publish)."""
        return self._latest

    def status(self) -> FeedStatus:
        """Queue depth and progress for `medgr2 status`."""
        done = sum(1 for ranks in self._done.values() if len(ranks) == self.world_size)
        idle = time.time() - self._waiting_since if self._waiting_since is not None else 0.0
        version = self._latest.version if self._latest is not None else 0
        return FeedStatus(self.name, self._next, done, version, idle, max(0, self._starts - 1))

    # ------------------------------------------------------------ learner side
    def start(self, rank: int, pid: int) -> FeedStart:
        """A (re)started worker announces itself; returns where to resume and the version floor."""
        if rank == 0:
            self._starts += 1
            self._pid = pid
        return FeedStart(self._latest.version if self._latest is not None else 0, self._covered, self._checkpoint)

    def worker_pid(self) -> int:
        """The process id of rank 0's worker (tests kill it)."""
        return self._pid

    async def next(self, rank: int, index: int) -> Work:
        """Item `index`, waiting until it is submitted."""
        if index < self._covered:
            raise LookupError(f"{self.name}: item {index} is inside checkpoint {self._checkpoint} and was "
                              "forgotten; a restarted learner must resume from that checkpoint")
        while index not in self._work:
            if rank == 0 and self._waiting_since is None:
                self._waiting_since = time.time()
            await self._changed.wait()
        if rank == 0:
            self._waiting_since = None
        return self._work[index]

    def complete(self, done: WorkDone) -> None:
        """Record one rank's report (the first report of an item and rank stands)."""
        self._done.setdefault(done.index, {}).setdefault(done.rank, done)
        if done.weights is not None:
            self.publish(done.weights)
        self._notify()

    def publish(self, weights: WeightVersion) -> None:
        """Hold the newest weights (versions only grow)."""
        if self._latest is None or weights.version > self._latest.version:
            self._latest = weights

    def covered(self, index: int, checkpoint: str) -> None:
        """The checkpoint at `checkpoint` covers items below `index`: a restart resumes there, and their
        payloads can go (their results stay)."""
        if index <= self._covered:
            return
        for i in range(self._covered, index):
            self._work.pop(i, None)
        self._covered, self._checkpoint = index, checkpoint
