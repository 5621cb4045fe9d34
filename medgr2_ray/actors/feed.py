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

The feed's own death. The feed is a named actor that Ray restarts (`max_restarts`); its small durable
state (the covered index, the checkpoint's directory, the newest version, the training steps per recipe
before the checkpoint, the learner's start count) is a JSON file written atomically on every change
(`state_path`), and a restarted feed reloads it. What it held in memory is gone: the queued items, the
results and the published weights' ref. So: every incarnation has a `token`; a worker of an older one is
refused at its next call (`next`, `covered` raise; its reports are ignored), its group fails, and Ray
Train restarts it from the checkpoint, as for a dead worker; it publishes above the reloaded floor. The
driver side (`LearnerHost.recover`) re-submits every item it queued from the covered index on (`restore`
adds only the missing ones), and asks again for the results it had not received; a result it never
received for an item the checkpoint covers comes back marked `report_lost` (the step is in the
checkpoint, so it is done, once; only its metrics are gone). A `--resume` builds the feed with
`resume=True`: it reloads the same file, and the new group starts from that checkpoint.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path

from medgr2_ray.actors.info import actor_info
from medgr2_ray.actors.persist import read_json_state, write_json_atomic
from medgr2_ray.messages import ActorInfo, FeedCheckpoint, FeedStart, FeedStatus, Work, WorkDone
from medgr2_ray.types import WeightVersion


class LearnerFeed:
    """Work queue, results and newest weights of one learner (see the module docstring)."""

    def __init__(self, name: str, world_size: int, state_path: str | None = None, resume: bool = False) -> None:
        self.name, self.world_size = name, world_size
        self._work: dict[int, Work] = {}
        self._done: dict[int, dict[int, WorkDone]] = {}
        self._next = 0
        self._covered = 0  # items below this index are inside a checkpoint: never redone
        self._latest: WeightVersion | None = None
        self._carrying: list[tuple[int, int]] = []  # (item, rank) of reports that still hold published weights
        self._floor = 0  # the newest version ever published (survives the feed: `_latest`'s ref does not)
        self._starts = 0
        self._pid = 0
        self._checkpoint: str | None = None  # the newest checkpoint's directory (covers items < _covered)
        self._recipe_steps: dict[str, int] = {}  # training steps per recipe inside that checkpoint
        self._waiting_since: float | None = None
        self._changed = asyncio.Event()
        self.token = uuid.uuid4().hex  # this incarnation
        self._state = Path(state_path) if state_path is not None else None
        self._lost_below = 0  # reloaded: results of items below this index died with the old incarnation
        if self._state is not None and (resume or actor_info(0).restarted) and self._state.is_file():
            self._load()
        else:
            self._save()

    # ------------------------------------------------------------ durable state
    def _load(self) -> None:
        assert self._state is not None
        state = read_json_state(self._state)
        self._covered = self._next = self._lost_below = int(state["covered"])
        self._checkpoint, self._floor = state["checkpoint"], int(state["floor"])
        self._recipe_steps = {str(k): int(v) for k, v in state.get("recipe_steps", {}).items()}
        self._starts = int(state.get("starts", 0))

    def _save(self) -> None:
        if self._state is not None:
            write_json_atomic(self._state, {"name": self.name, "covered": self._covered, "checkpoint": self._checkpoint,
                                            "floor": self._floor, "recipe_steps": self._recipe_steps,
                                            "starts": self._starts})

    def ready(self) -> ActorInfo:
        """Liveness probe (chaos tests read the pid)."""
        return actor_info(self._floor)

    def incarnation(self) -> str:
        """This incarnation's token (a new one after every restart)."""
        return self.token

    def checkpoint(self) -> FeedCheckpoint:
        """The newest checkpoint and what it covers."""
        return FeedCheckpoint(self._covered, self._checkpoint, dict(self._recipe_steps))

    def restore(self, items: dict[int, Work]) -> FeedCheckpoint:
        """After this feed restarted: queue again the items the driver submitted (those a checkpoint covers,
        or already queued here, are left out); returns the checkpoint they resume from."""
        for index in sorted(items):
            if index >= self._covered and index not in self._work and index not in self._done:
                self.submit(items[index], index)
        return self.checkpoint()

    def _refuse(self, token: str | None) -> None:
        if token is not None and token != self.token:
            raise RuntimeError(f"{self.name}: the feed restarted; this worker group belongs to the one before "
                               "and must restart from the newest checkpoint")

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
        if index < self._lost_below and len(self._done.get(index, {})) < self.world_size:
            # Reported to the incarnation before this one and inside its checkpoint: done, its report lost.
            now = time.time()
            return [WorkDone(index, r, self._floor, {}, now, now, extra={"report_lost": True})
                    for r in range(self.world_size)]
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
        version = self._latest.version if self._latest is not None else self._floor
        return FeedStatus(self.name, self._next, done, version, idle, max(0, self._starts - 1))

    # ------------------------------------------------------------ learner side
    def start(self, rank: int, pid: int) -> FeedStart:
        """A (re)started worker announces itself; returns where to resume, the version floor and the token
        its later calls carry."""
        if rank == 0:
            self._starts += 1
            self._pid = pid
            self._save()
        return FeedStart(self._floor, self._covered, self._checkpoint, self.token)

    def worker_pid(self) -> int:
        """The process id of rank 0's worker (tests kill it)."""
        return self._pid

    async def next(self, rank: int, index: int, token: str | None = None) -> Work:
        """Item `index`, waiting until it is submitted (`token`: the incarnation the worker started with)."""
        self._refuse(token)
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

    def complete(self, done: WorkDone, token: str | None = None) -> None:
        """Record one rank's report (the first report of an item and rank stands; an older incarnation's
        worker is not heard: its group is about to restart and redo the item)."""
        if token is not None and token != self.token:
            return
        stored = self._done.setdefault(done.index, {}).setdefault(done.rank, done)
        if stored is done and done.weights is not None:
            self._carrying.append((done.index, done.rank))
            self.publish(done.weights)
        self._notify()

    def publish(self, weights: WeightVersion) -> None:
        """Hold the newest weights (versions only grow; the floor is saved before anyone can see them)."""
        if self._latest is None or weights.version > self._latest.version:
            self._latest = weights
            self._drop_superseded(weights.version)
        if weights.version > self._floor:
            self._floor = weights.version
            self._save()

    def _drop_superseded(self, newest: int) -> None:
        """Reports keep the weights they published only until a newer version exists. A report holding a
        `WeightVersion` holds its object ref, and the object store frees a version only once no process holds
        its ref: kept, every version a run ever published stayed in the store (one per step, measured).
        A later `result` of such an item reads `weights=None` with the item's `version`; whoever needs
        weights then asks `latest`, which is newer."""
        keep = []
        for index, rank in self._carrying:
            done = self._done[index][rank]
            if done.weights is not None and done.weights.version < newest:
                self._done[index][rank] = replace(done, weights=None)
            else:
                keep.append((index, rank))
        self._carrying = keep

    def covered(self, index: int, checkpoint: str, token: str | None = None,
                recipe_steps: dict[str, int] | None = None) -> None:
        """The checkpoint at `checkpoint` covers items below `index` (and `recipe_steps` training steps per
        recipe): a restart resumes there, and their payloads can go (their results stay)."""
        self._refuse(token)
        if index <= self._covered:
            return
        for i in range(self._covered, index):
            self._work.pop(i, None)
        self._covered, self._checkpoint = index, checkpoint
        self._recipe_steps = dict(recipe_steps or {})
        self._save()
