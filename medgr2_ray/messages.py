"""What actors and the controller say to each other: step reports, receipts, snapshots, status.

Every message is a frozen dataclass: typed, never a tuple or a string-keyed dict, and small (object refs
stand in for payloads). `types.py` holds the data vocabulary (samples, rollouts, weights); this module
holds the control messages built from it. No Ray here: a message is plain data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from medgr2_ray.types import Sample, TrainBatch, WeightVersion


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
    uniform_ids: tuple[str, ...] = ()  # refused by dynamic sampling: every reward equal, no signal
    accepted_ids: tuple[str, ...] = ()  # the groups now in the buffer


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
class Span:
    """An actor was busy with `kind` from `start` to `end` (wall-clock seconds): one bar of the timeline."""

    actor: str
    kind: str  # "generate", "score", "select", "train_generator", "train_reward", "train_policy_sft", ...
    start: float
    end: float


@dataclass(frozen=True)
class CallTime:
    """One remote call a loop made: what it was, when the loop submitted it and when it saw it finish
    (wall-clock seconds, as `Span`s): with the actors' spans, where each step's time went."""

    stage: str  # "generate", "score", "put", "learn", "offer"
    submitted: float
    observed: float


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


# ----------------------------------------------------------------------------- learner work
# A learner (hosted by Ray Train, `actors/learner_host.py`) runs a queue of these, in order, on every
# rank; its feed (`actors/feed.py`) hands the same item to all ranks and keeps it until a checkpoint
# covers it, so a worker group restarted from its last checkpoint redoes exactly the lost items.


class Recipe(enum.Enum):
    """What one training step does with the batch it pulls (learner/recipes.py has each)."""

    GENERATOR_SFT = "generator_sft"  # G imitates rendered samples (bootstrap on seeds, RFT on kept)
    REWARD_ANSWER = "reward_answer"  # a verifier R learns to answer the questions it will grade
    REWARD_GRADE = "reward_grade"  # R regresses onto graded samples (faithful/perturbed/incoherent/irrelevant)
    SOLVER_SFT = "solver_sft"  # P learns the answers (balanced over modality, augmented)
    SOLVER_GRPO = "solver_grpo"  # P's GRPO step on a batch taken from the rollout buffer


@dataclass(frozen=True)
class TrainWork:
    """One optimizer step. `batch` is an object ref to what the step trains on: a `list[Sample]` drawn by
    the kept-sample store, or a `TakeResult` from the rollout buffer; the driver never holds the data."""

    recipe: Recipe
    batch: Any  # ObjectRef
    step: int  # the recipe's own step counter: seeds augmentation and graded-data draws
    publish: bool = False  # rank 0 publishes the new weights after the step


@dataclass(frozen=True)
class PublishWork:
    """Publish the current weights (every rank takes part in the gather; rank 0 puts)."""


@dataclass(frozen=True)
class SaveWork:
    """Write the model as a directory other stages and evaluation load (rank 0 writes)."""

    directory: str


@dataclass(frozen=True)
class CheckpointWork:
    """Write an exact, resumable checkpoint (weights, optimizer, schedule, version, RNG) to `directory`."""

    directory: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreWork:
    """Load a checkpoint written by `CheckpointWork`."""

    directory: str


@dataclass(frozen=True)
class StageWork:
    """Begin a new training stage (SFT -> GRPO) with these learner settings: its own rate and schedule."""

    learner_cfg: Any  # config.LearnerConfig


@dataclass(frozen=True)
class StopWork:
    """End the learner's train loop (its last item)."""


Work = TrainWork | PublishWork | SaveWork | CheckpointWork | RestoreWork | StageWork | StopWork


@dataclass(frozen=True)
class WorkDone:
    """What one rank did with one work item. Rank 0's carries the published `weights`, when it published,
    until a newer version exists (the feed then drops them: a held ref keeps a version in the object store)."""

    index: int
    rank: int
    version: int  # the learner's weight version after the item
    metrics: dict[str, float]
    started: float  # wall-clock seconds (time.time()): the run's timeline draws these
    ended: float
    weights: WeightVersion | None = None
    step_report: StepReport | None = None  # GRPO steps: the groups this rank trained
    extra: dict[str, Any] = field(default_factory=dict)  # RestoreWork: the checkpoint's extra
    error: str | None = None  # the item's batch could not be read (its producer died): nothing was trained


@dataclass(frozen=True)
class FeedStart:
    """What a (re)started learner worker is told: publish above `floor`; resume at `first` from `checkpoint`."""

    floor: int  # the newest version published so far
    first: int  # the first item no checkpoint covers
    checkpoint: str | None  # the checkpoint covering items < first (None: start from the model directory)
    token: str = ""  # the feed's incarnation: a worker of an older one is refused (its group restarts)


@dataclass(frozen=True)
class FeedCheckpoint:
    """Where a learner's newest checkpoint is and what it covers (a feed's durable state, and what a
    `--resume` continues from)."""

    first: int  # items below this index are inside the checkpoint
    directory: str | None  # None: no checkpoint yet
    recipe_steps: dict[str, int] = field(default_factory=dict)  # training steps run per recipe before `first`


@dataclass(frozen=True)
class FeedStatus:
    """A learner's queue as `medgr2 status` shows it."""

    name: str
    submitted: int
    done: int
    version: int
    idle_s: float  # seconds rank 0 has waited for work since the last item (the learner is starved)
    restarts: int


# ----------------------------------------------------------------------------- the data side
# generator pool -> scorer pool -> kept-sample store. Candidates travel actor to actor as object refs;
# the controller only sees the receipts.


@dataclass(frozen=True)
class ScoredCandidates:
    """What a scorer made of one generate call: the parsed samples with R's score and version, the
    outputs that did not parse (with reasons), and the requests they answer."""

    request_ids: tuple[str, ...]
    samples: tuple[Sample, ...]  # provenance: G version, round, strategy, reward, rm_version
    failures: tuple[tuple[str, str], ...]  # (reason, text) of each output that did not become a sample
    duplicates: int  # outputs that repeated a sample of the same call
    rm_version: int


@dataclass(frozen=True)
class Versions:
    """The newest published version of each learner when a piece of work was handed on."""

    generator: int = 0
    reward_model: int = 0
    policy: int = 0


@dataclass(frozen=True)
class OfferReceipt:
    """What the store did with one `ScoredCandidates`: every candidate counted exactly once."""

    request_ids: tuple[str, ...]
    accepted: bool  # False: these requests were offered before (a re-issued chain) and are ignored
    candidates: int
    kept: int
    unparseable: int
    rejected: dict[str, int]  # reason -> count
    kept_total: int  # the store's kept count after this offer (the learners' data cursor)
    duplicates: int = 0  # outputs that repeated another output of the same call
    generator_lag: float = 0.0  # mean (newest G version - the G version that wrote each candidate)
    reward_lag: float = 0.0  # mean (newest R version - the R version that scored each candidate)


class SampleSource(enum.Enum):
    """Which samples a training batch is drawn from."""

    SEEDS = "seeds"
    KEPT = "kept"  # kept samples in a range (a round's, or everything kept so far)
    SEEDS_AND_KEPT = "seeds_and_kept"


@dataclass(frozen=True)
class BatchSpec:
    """One training batch the store draws: reproducible from these fields alone (a redone step draws it
    again identically), so the cursor range is fixed when the step is submitted."""

    source: SampleSource
    size: int
    step: int
    salt: str  # names the learner and stage: different learners draw independently
    kept_from: int = 0
    kept_to: int = 0  # kept samples [kept_from, kept_to) take part
    seed_share: float | None = None  # SEEDS_AND_KEPT: fraction drawn from the seeds (None: uniform over both)
    balanced: bool = False  # every modality equally likely (the solver's SFT)


@dataclass(frozen=True)
class StoreStatus:
    """The store's counters for `medgr2 status` and the run log."""

    candidates: int
    kept: int
    unparseable: int
    rejected: dict[str, int]
    seeds: int
    seconds: float


@dataclass(frozen=True)
class GRPOAccounting:
    """Where every request the GRPO loop issued went; each id must be in exactly one of the places."""

    issued: tuple[str, ...]
    trained: tuple[str, ...]
    dropped_stale: tuple[str, ...]
    uniform: tuple[str, ...]  # refused by dynamic sampling
    buffered: tuple[str, ...]  # still in the buffer at the end
    outstanding: tuple[str, ...]  # in flight or waiting to be re-issued at the end
    reissued: int

    def problems(self) -> list[str]:
        """Ids found twice, or issued and found nowhere ([] when the accounting holds)."""
        places = [*self.trained, *self.dropped_stale, *self.uniform, *self.buffered, *self.outstanding]
        seen: dict[str, int] = {}
        for i in places:
            seen[i] = seen.get(i, 0) + 1
        twice = [f"{i} counted {n} times" for i, n in seen.items() if n > 1]
        lost = [f"{i} lost" for i in self.issued if i not in seen]
        return twice + lost + [f"{i} never issued" for i in seen if i not in set(self.issued)]


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class LearnerStatus:
    """One learner as `medgr2 status` shows it."""

    name: str
    version: int
    steps_done: int
    steps_submitted: int
    idle_s: float  # how long it has waited for work right now
    restarts: int  # worker-group restarts Ray Train made


@dataclass(frozen=True)
class DataStatus:
    """The data side: generation -> scoring -> selection."""

    candidates: int
    kept: int
    candidates_per_s: float
    kept_per_s: float
    requests_in_flight: int
    requests_reissued: int
    generator_lag: float  # mean (newest G version - the version that wrote it) of the last candidates
    reward_lag: float  # mean (newest R version - the version that scored it)


@dataclass(frozen=True)
class FlywheelStatus:
    """The whole cycle's live state: what `medgr2 status` prints in every phase."""

    run: str
    phase: str  # "data", "grpo", "evaluate", "done"
    seconds: float
    pools: tuple[PoolStatus, ...]
    learners: tuple[LearnerStatus, ...]
    data: DataStatus | None = None
    grpo: LoopStatus | None = None
