"""Where a synchronous GRPO step's time goes: the step cut into the calls and hand-overs it is made of.

In the synchronous loop (`grpo.max_staleness = 0`) nothing overlaps: from the end of one learner step to
the end of the next, the time passes through a fixed sequence of places, and every one of them is
visible in what the run recorded (`grpo_job.LoopTrace`):

- the controller's `CallTime`s: when the driver submitted each call and when it saw it finish;
- the actors' `Span`s from the monitor: the rollout actor's `generate` (with its `load_weights` inside),
  the scorer's `score`, the buffer's `put` and `take`;
- rank 0's `WorkDone` of each learner step: when the learner got the item (`started`), how long it
  waited for its batch (`batch_wait_s`), when it ended, and how long the export + put of the new
  weights took (`publish_s`).

`step_hops` turns one step into named, consecutive intervals that add up to the step (all wall-clock
seconds on one host). Intervals in `WORK` are the same work the one-process loop does; every other
interval is orchestration: an actor call's dispatch, an object-store hand-over, the feed's round trip,
the driver's own time. Pure Python: no Ray.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# (name, what it is), in step order; the first two lead from the previous step's end to the generate call.
HOPS: tuple[tuple[str, str], ...] = (
    ("result -> driver", "learner reports -> feed -> driver sees the step (feed round trip)"),
    ("driver", "driver's own time: step bookkeeping until the next generate call is out"),
    ("driver -> rollout", "generate call dispatched to the rollout actor (args: requests, new weights' ref); "
                          "submitted ahead: the step's result reaching it through Ray (the two hops above are 0)"),
    ("load weights", "rollout actor maps the published weights (object store) and serves them"),
    ("generate", "generation"),
    ("rollouts -> scorer", "rollouts handed to the scorer (object store; via the driver unless chained)"),
    ("score", "scoring"),
    ("scores -> buffer", "scored groups handed to the buffer's put"),
    ("put", "buffer put"),
    ("put -> take", "until the buffer's take runs (driver sees the put and queues the step, unless ahead)"),
    ("take", "buffer take"),
    ("batch -> learner", "taken batch reaches the learner (object store; feed item if not queued ahead)"),
    ("train", "GRPO step"),
    ("publish", "export + ray.put of the new weights"),
)
WORK = frozenset({"load weights", "generate", "score", "train", "publish"})
# The one-way messages between processes that a synchronous step (the `next` variant) passes through in a
# row, from the learner's report of one step to its get of the next step's batch, and whether the receiver
# had been waiting for a large part of the step (100-450 ms at ~0.5 s steps) or was busy a moment before
# (wake.py: a message to a process that waited costs several times more). Publishing and loading weights
# go through the object store besides.
SEQUENTIAL_MESSAGES: tuple[tuple[str, bool], ...] = (
    ("learner -> feed: the step's report", True),
    ("feed -> driver: the step's result (the reply to its call)", True),
    ("driver -> rollout: the generate call, its dependency on the step now resolved", True),
    ("rollout -> driver: the rollouts", True),
    ("driver -> scorer: the score call with them", True),
    ("scorer -> driver: the scored groups", False),
    ("driver -> buffer: the put with them", True),
    ("buffer -> driver: the put's receipt", False),
    ("driver -> buffer: the take, its dependency on the put now resolved", False),
    ("buffer -> driver: the batch", False),
    ("driver -> learner: the batch (the answer to the learner's get)", True),
)
NAMES = tuple(name for name, _ in HOPS)


@dataclass(frozen=True)
class StepHops:
    """One step's consecutive intervals (seconds), keyed by hop name; they add up to `total`."""

    seconds: dict[str, float]
    total: float

    @property
    def work(self) -> float:
        return sum(v for k, v in self.seconds.items() if k in WORK)

    @property
    def overhead(self) -> float:
        return self.total - self.work


def _one(spans: Sequence[Any], kind: str, lo: float, hi: float) -> Any | None:
    """The single span of `kind` starting in (lo, hi], or None (none or several)."""
    found = [s for s in spans if s.kind == kind and lo < s.start <= hi]
    return found[0] if len(found) == 1 else None


def step_hops(prev: Any, done: Any, calls: Sequence[Any], spans: Sequence[Any]) -> StepHops | None:
    """The intervals of the step that ended with `done` (rank 0's `WorkDone`; `prev`: the step before).
    None when the step does not have exactly one call of each kind (then it cannot be cut this way)."""
    lo, hi = prev.ended, done.ended
    learn = [c for c in calls if c.stage == "learn" and lo <= c.observed < hi]  # the step before's result
    gens = [c for c in calls if c.stage == "generate" and lo < c.observed <= hi]
    gen, score, put, take = (_one(spans, k, lo, hi) for k in ("generate", "score", "put", "take"))
    if not learn or len(gens) != 1 or None in (gen, score, put, take):
        return None
    load = _one(spans, "load_weights", lo, hi)
    load_s = load.end - load.start if load is not None else 0.0
    batch_ready = done.started + done.metrics.get("batch_wait_s", 0.0)
    publish_s = done.metrics.get("publish_s", 0.0)
    # A generate submitted ahead (`loop.generate_ahead`) was out before the step before ended: from its
    # end, nothing passes through the driver until the generate runs.
    seen = max(lo, min(c.observed for c in learn))
    submitted = max(lo, gens[0].submitted)
    points = [lo, min(seen, submitted), submitted, gen.start, gen.start + load_s, gen.end, score.start, score.end,
              put.start, put.end, take.start, take.end, batch_ready, hi - publish_s, hi]
    seconds = {name: b - a for name, a, b in zip(NAMES, points, points[1:])}
    return StepHops(seconds, hi - lo)


def trace_hops(trace: Any) -> list[StepHops]:
    """Every timed step of a `grpo_job.LoopTrace` that can be cut (its first `WorkDone` is the step before;
    the steps in its `skip` started from an idle loop, not from the step before, and are left out)."""
    dones, skip = trace.step_dones, trace.skip
    cut = (step_hops(a, b, trace.calls, trace.spans)
           for i, (a, b) in enumerate(zip(dones, dones[1:]), start=1) if i not in skip)
    return [h for h in cut if h is not None]


def median_ms(steps: Sequence[StepHops]) -> dict[str, float]:
    """Median milliseconds of each hop, of the work, the overhead and the whole step."""
    if not steps:
        return {}
    out = {name: 1000 * statistics.median(s.seconds[name] for s in steps) for name in NAMES}
    out["work"] = 1000 * statistics.median(s.work for s in steps)
    out["overhead"] = 1000 * statistics.median(s.overhead for s in steps)
    out["step"] = 1000 * statistics.median(s.total for s in steps)
    return out


# The data lane's call, run one at a time (data_job.run_lane): from its generate call to the next one's.
DATA_HOPS: tuple[tuple[str, str], ...] = (
    ("driver -> generator", "generate call dispatched to the generator actor"),
    ("generate", "generation"),
    ("rollouts -> scorer", "rollouts handed to the scorer (object store; via the driver unless chained)"),
    ("parse + score", "parsing the outputs into samples, R scoring them"),
    ("scores -> driver", "the scorer's result seen by the driver, which submits the offer"),
    ("offer", "the store decides every candidate (its work) and answers (its round trip)"),
    ("driver", "driver's own time until the next call is out"),
)
DATA_WORK = frozenset({"generate", "parse + score", "offer"})
DATA_NAMES = tuple(name for name, _ in DATA_HOPS)


def data_call_hops(calls: Sequence[Any], spans: Sequence[Any]) -> list[StepHops]:
    """Each call of a sequential data-lane run cut into `DATA_HOPS` (calls without exactly one generate
    span, one score span and one offer are skipped). The store's decision is not separable from its
    round trip here: `offer` holds both (one process measures the decision alone)."""
    gens = sorted((c for c in calls if c.stage == "generate"), key=lambda c: c.submitted)
    offers = [c for c in calls if c.stage == "offer"]
    out = []
    for k, g in enumerate(gens):
        hi = gens[k + 1].submitted if k + 1 < len(gens) else float("inf")
        gen, score = _one(spans, "generate", g.submitted, hi), _one(spans, "score", g.submitted, hi)
        offer = [o for o in offers if g.submitted < o.submitted <= hi]
        if gen is None or score is None or len(offer) != 1:
            continue
        end = hi if k + 1 < len(gens) else offer[0].observed
        points = [g.submitted, gen.start, gen.end, score.start, score.end, offer[0].submitted, offer[0].observed, end]
        seconds = {name: b - a for name, a, b in zip(DATA_NAMES, points, points[1:])}
        out.append(StepHops(seconds, end - g.submitted))
    return out


def data_median_ms(steps: Sequence[StepHops]) -> dict[str, float]:
    """Median milliseconds of each data hop and of the whole call."""
    if not steps:
        return {}
    out = {name: 1000 * statistics.median(s.seconds[name] for s in steps) for name in DATA_NAMES}
    out["call"] = 1000 * statistics.median(s.total for s in steps)
    return out
