"""The GRPO controller's bookkeeping types: where each call in flight is (`Stage`, `Flight`) and what the
run counted (`Ledger`), kept apart from the event loop so tests and benchmarks read them without it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from medgr2_ray.actors.pool import Member
from medgr2_ray.types import GenerationRequest


class Stage(enum.Enum):
    """Where a call in flight is on its way: generate -> score -> put, or a learner step."""

    GENERATE = "generate"
    SCORE = "score"
    PUT = "put"
    LEARN = "learn"


@dataclass
class Flight:
    """One call in flight: its stage, the actor it runs on, and the requests it carries."""

    stage: Stage
    requests: tuple[GenerationRequest, ...]
    member: Member | None = None
    chain: tuple[Member, ...] = ()  # the actors this chain ran on (blamed if it fails)
    chained: bool = False  # the next stage was submitted on this call's result: that one carries the requests
    after: Any = None  # generate ahead: the result ref of the learner step this chain waits for
    take: Any = None  # a learner step: the ref of the buffer's take that is its batch
    submitted: float = field(default_factory=time.time)  # wall-clock, taken before the call was submitted


@dataclass
class Ledger:
    """Everything counted, so a run can prove where every request went."""

    trained_ids: list[str] = field(default_factory=list)
    dropped_stale_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    uniform_ids: list[str] = field(default_factory=list)  # refused by dynamic sampling (no signal), then replaced
    reissued: int = 0
    staleness: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    published: list[int] = field(default_factory=list)  # weight versions handed to rollout actors
    rollout_versions: set[int] = field(default_factory=set)  # versions that produced buffered groups
