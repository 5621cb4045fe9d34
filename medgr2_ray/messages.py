"""What actors and the controller say to each other: step reports, receipts, snapshots, status.

Every message is a frozen dataclass: typed, never a tuple or a string-keyed dict, and small (object refs
stand in for payloads). `types.py` holds the data vocabulary (samples, rollouts, weights); this module
holds the control messages built from it. No Ray here: a message is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medgr2_ray.types import TrainBatch, WeightVersion


@dataclass(frozen=True)
class ActorInfo:
    """Identity of a live actor: its Ray name, process, node, and the weight version it holds."""

    name: str
    pid: int
    node_id: str
    weight_version: int
    restarted: bool  # True after Ray restarted this actor (max_restarts)


@dataclass(frozen=True)
class BufferSnapshot:
    """The versions of every buffered group after operation number `seq` (oldest first).

    Every put and take returns one; the controller keeps the one with the highest `seq`, so replies
    that arrive out of order can never roll its view of the buffer back."""

    seq: int
    versions: tuple[int, ...]


@dataclass(frozen=True)
class PutReceipt:
    """What a `put` did: the versions of the accepted groups and the ids refused as duplicates."""

    accepted_versions: tuple[int, ...]
    duplicate_ids: tuple[str, ...]
    depth: int
    snapshot: "BufferSnapshot"


@dataclass(frozen=True)
class BufferStats:
    """Counters since the run started (restored on resume) and the current contents by version."""

    capacity: int
    depth: int
    versions: tuple[int, ...]  # weight version of each buffered group, oldest first
    accepted: int
    taken: int
    dropped_stale: int
    duplicates: int


@dataclass(frozen=True)
class TakeResult:
    """A batch for the learner plus the ids of groups dropped as too stale while taking it."""

    batch: TrainBatch
    dropped_stale_ids: tuple[str, ...]
    snapshot: BufferSnapshot

    @property
    def group_ids(self) -> tuple[str, ...]:
        """Ids of the groups in the batch."""
        return tuple(g.group_id for g in self.batch.groups)


@dataclass(frozen=True)
class Rendezvous:
    """Where rank 0 listens for the torch.distributed rendezvous."""

    host: str
    port: int


@dataclass(frozen=True)
class StepReport:
    """What one rank's GRPO step did. Only rank 0's carries `weights` (the newly published version)."""

    rank: int
    learner_version: int  # the version the batch was trained at (before the update)
    version: int  # the version after the update (== learner_version when the step was skipped)
    group_ids: tuple[str, ...]  # the groups this rank trained on
    group_versions: tuple[int, ...]  # their weight versions
    dropped_stale_ids: tuple[str, ...]  # dropped by the buffer while taking this batch
    metrics: dict[str, float]
    seconds: float
    weights: WeightVersion | None = None
    buffer_snapshot: BufferSnapshot | None = None  # the buffer right after this batch was taken


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
