"""The data side of the flywheel: image prompts -> generator pool -> scorer pool -> kept-sample store.

Each generate call carries a few requests (`loop.requests_per_call`) and the newest G weights; its
rollouts go (as an object ref, never through this process) to the least busy scorer with the newest R
weights, which parses and scores them; the scored candidates go to the store, which decides each one and
answers with an `OfferReceipt`. With `loop.chain_calls` the score call is submitted with the generate
call, on its result ref (Ray hands the rollouts on without a round trip through this process; the R
weights are the newest at launch); the offer is submitted once the score is seen, with the newest G and
R versions then, against which the store judges staleness. The lane keeps at most `MAX_CALLS_PER_ACTOR` calls
queued per generator, so generators never idle between calls and nothing piles up.

Every request is accounted for by id (`DataLedger`): issued, answered by exactly one accepted receipt,
or still in flight or waiting to be re-issued. A chain that fails because an actor died (Ray restarts
it) puts its requests back at the head of the queue, whole: the same requests in the same call, so the
seeded engine writes the same samples, and the store refuses a request id it already accepted.
"""

from __future__ import annotations

import enum
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from medgr2_ray.actors.pool import Member, WorkerPool
from medgr2_ray.algo.requests import CandidateMeta
from medgr2_ray.config import Config
from medgr2_ray.messages import CallTime, OfferReceipt, Versions
from medgr2_ray.metrics import REQUESTS_REISSUED, Metrics
from medgr2_ray.types import GenerationRequest, SamplingParams, WeightVersion

MAX_CALLS_PER_ACTOR = 2  # one running, one queued: an actor never idles between calls
MAX_TIMINGS = 100_000  # call timings kept for the benchmarks (the newest)
Prompt = tuple[GenerationRequest, CandidateMeta]


@dataclass(frozen=True)
class Call:
    """The requests of one generate call, kept together so a re-issue repeats exactly that call."""

    requests: tuple[GenerationRequest, ...]
    meta: dict[str, CandidateMeta]
    round: int


class Stage(enum.Enum):
    """Where a call is on its way: generate -> score -> offer."""

    GENERATE = "generate"
    SCORE = "score"
    OFFER = "offer"


@dataclass
class Chain:
    """One call on its way: its stage and the actors it ran on (blamed if it fails)."""

    stage: Stage
    call: Call
    members: tuple[Member, ...]
    chained: bool = False  # the score was submitted on this generate call's result: it carries the call
    submitted: float = field(default_factory=time.time)  # wall-clock, taken before the call was submitted


@dataclass
class DataLedger:
    """Where every request went: the proof that nothing was lost or counted twice."""

    issued: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # by an accepted receipt
    refused: list[str] = field(default_factory=list)  # offered again after acceptance (re-issue of a done chain)
    closed: set[str] = field(default_factory=set)  # answered or refused: the store holds their candidates
    reissued: int = 0
    receipts: list[OfferReceipt] = field(default_factory=list)


class DataLane:
    """Runs the data side for the flywheel (see the module docstring)."""

    def __init__(self, cfg: Config, generator: WorkerPool, scorer: WorkerPool, store: Any) -> None:
        self.cfg, self.generator, self.scorer, self.store = cfg, generator, scorer, store
        self.sampling = SamplingParams(n=cfg.cycle.samples_per_prompt, temperature=cfg.cycle.temperature,
                                       max_new_tokens=cfg.cycle.max_new_tokens)
        self.flights: dict[Any, Chain] = {}
        self.unscored: deque[tuple[Any, Chain]] = deque()
        self.retry: deque[Call] = deque()
        self.ledger = DataLedger()
        self.metrics = Metrics()
        self.g_weights: WeightVersion | None = None
        self.r_weights: WeightVersion | None = None
        self.calls: deque[CallTime] = deque(maxlen=MAX_TIMINGS)  # every call's submit and finish (benchmarks)

    # ------------------------------------------------------------ state
    @property
    def versions(self) -> Versions:
        """The newest G and R versions the lane hands on."""
        return Versions(self.g_weights.version if self.g_weights else 0, self.r_weights.version if self.r_weights else 0)

    def _calls(self) -> list[Call]:
        """Calls issued and not yet answered (a chained generate's call is carried by its score)."""
        return ([c.call for c in self.flights.values() if not c.chained] + [c.call for _, c in self.unscored]
                + list(self.retry))

    def in_flight(self) -> int:
        """Requests issued and not yet answered (in a chain, waiting for a scorer, or to be re-issued)."""
        return sum(len(c.requests) for c in self._calls())

    def idle(self) -> bool:
        """Nothing in flight and nothing to re-issue."""
        return not self.flights and not self.unscored and not self.retry

    def refs(self) -> list[Any]:
        """The refs this lane waits on."""
        return list(self.flights)

    # ------------------------------------------------------------ launching
    def launch(self, prompts: Iterator[Prompt], round_index: int, limit: int | None = None) -> int:
        """Start generate calls while a generator has room (re-issues first); at most `limit` new
        requests (None: as many as the generators take). Returns how many new requests started."""
        started = 0
        while True:
            member = self.generator.least_busy(MAX_CALLS_PER_ACTOR)
            if member is None:
                return started
            if self.retry:
                call = self.retry.popleft()
            else:
                room = self.cfg.loop.requests_per_call if limit is None else min(self.cfg.loop.requests_per_call,
                                                                                   limit - started)
                batch = [p for _, p in zip(range(room), prompts)]
                if not batch:
                    return started
                call = Call(tuple(r for r, _ in batch), {r.request_id: m for r, m in batch}, round_index)
                self.ledger.issued.extend(call.meta)
                started += len(batch)
            self._generate(member, call)

    def _generate(self, member: Member, call: Call) -> None:
        # Same call, same samples: the seed depends only on the run's seed and the call's first request.
        seed = zlib.crc32(f"{self.cfg.run.seed}:{call.requests[0].request_id}".encode())
        now = time.time()
        ref = member.handle.generate.remote(list(call.requests), replace(self.sampling, seed=seed), self.g_weights)
        member.in_flight += 1
        chain = self.flights[ref] = Chain(Stage.GENERATE, call, (member,), submitted=now)
        if self.cfg.loop.chain_calls and not self.unscored:
            self._submit_score(ref, chain)

    def _submit_score(self, gen_ref: Any, chain: Chain) -> bool:
        member = self.scorer.least_busy(max_in_flight=1 << 30)
        if member is None:
            return False
        now = time.time()
        ref = member.handle.score_candidates.remote(gen_ref, chain.call.meta, chain.call.round, self.r_weights)
        member.in_flight += 1
        chain.chained = True
        self.flights[ref] = Chain(Stage.SCORE, chain.call, (*chain.members, member), submitted=now)
        return True

    def pump(self) -> None:
        """Hand generated calls waiting for a scorer to one that is ready."""
        self.generator.poll_ready()
        self.scorer.poll_ready()
        while self.unscored and self._submit_score(*self.unscored[0]):
            self.unscored.popleft()

    # ------------------------------------------------------------ completions
    def on_done(self, ref: Any) -> OfferReceipt | None:
        """Advance the chain `ref` belongs to; returns the store's receipt when a chain completes."""
        chain = self.flights.pop(ref)
        self.calls.append(CallTime(chain.stage.value, chain.submitted, time.time()))
        if chain.stage is Stage.GENERATE:
            chain.members[0].in_flight -= 1
            if not chain.chained and (self.unscored or not self._submit_score(ref, chain)):
                self.unscored.append((ref, chain))
            return None
        if chain.stage is Stage.SCORE:
            chain.members[-1].in_flight -= 1
            now = time.time()
            self.flights[self.store.offer.remote(ref, self.versions)] = Chain(Stage.OFFER, chain.call, chain.members,
                                                                              submitted=now)
            return None
        try:
            receipt: OfferReceipt = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.RayTaskError) as exc:
            self._reissue(chain, exc)
            return None
        (self.ledger.answered if receipt.accepted else self.ledger.refused).extend(receipt.request_ids)
        self.ledger.closed.update(receipt.request_ids)
        self.ledger.receipts.append(receipt)
        return receipt

    def _reissue(self, chain: Chain, exc: Exception) -> None:
        """An actor of the chain died: the whole call goes back to the head of the queue."""
        self.retry.appendleft(chain.call)
        self.ledger.reissued += len(chain.call.requests)
        self.metrics.record(REQUESTS_REISSUED, len(chain.call.requests), pool="data")
        for member in chain.members:
            for pool in (self.generator, self.scorer):
                pool.suspect(member)
        print(f"[flywheel] re-issuing {len(chain.call.requests)} requests after {type(exc).__name__}", flush=True)

    def outstanding(self) -> list[str]:
        """Ids issued and not answered yet (in flight, waiting for a scorer, or to be re-issued)."""
        return [i for call in self._calls() for i in call.meta]


def wait_any(refs: list[Any], timeout_s: float) -> list[Any]:
    """The refs that are done (at least one, or none after `timeout_s`), never fetching their values."""
    if not refs:
        time.sleep(min(timeout_s, 0.05))
        return []
    done, _ = ray.wait(refs, num_returns=1, timeout=timeout_s, fetch_local=False)
    more, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    return list(dict.fromkeys([*done, *more]))
