"""One learner's side of the flywheel: which steps it is granted, and keeping its queue short but never empty.

The flywheel grants a learner phases of steps (`Phase`: a recipe, where its batches come from, how many
steps, when to publish). The lane submits them to the learner's feed a few at a time (`depth`): each
step's batch is drawn by the kept-sample store from a `BatchSpec` fixed at submission (so a step redone
after a restart draws the same batch), and passed to the learner as an object ref. A "live" phase reads
the kept stream up to the store's count at submission time, so later steps see more kept samples.

Results come back as `WorkDone` reports (`collect`; when the learner's feed died under a result, the
lane waits on the same item again from the restarted feed: `LearnerHost.recover`): the lane logs their metrics to the run log (one record per step,
stage = the phase's `log_stage`), keeps their busy spans for the timeline, and remembers the newest
weights a step published.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray

from medgr2_ray.actors.learner_host import FEED_DIED, LearnerHost
from medgr2_ray.messages import BatchSpec, PublishWork, Recipe, SampleSource, Span, TrainWork, WorkDone
from medgr2_ray.metrics import RunLog
from medgr2_ray.types import WeightVersion


@dataclass(frozen=True)
class Phase:
    """A run of steps of one recipe."""

    recipe: Recipe
    source: SampleSource
    steps: int
    batch_size: int
    log_stage: str  # the run log's stage name for these steps ("generator_sft", "reward_model", "solver_sft")
    live: bool = False  # draw from every sample kept so far (else from kept_from..kept_to)
    kept_from: int = 0
    kept_to: int = 0
    seed_share: float | None = None
    balanced: bool = False
    publish_every: int = 0  # 0: publish only after the phase's last step (if publish_at_end)
    publish_at_end: bool = True
    span: str = ""  # the timeline's name for these steps ("train:generator_bootstrap", ...); "" = "train:<log_stage>"


@dataclass(frozen=True)
class _Pending:
    """A submitted item: where its metrics go, and how to draw its batch again if the draw is lost."""

    stage: str
    step: int
    work: Any
    spec: BatchSpec | None = None
    span: str = ""


@dataclass
class _Open:
    phase: Phase
    next_step: int = 0  # within the phase


def draw_salt(role: str, recipe: Recipe) -> str:
    """The salt of a learner's batch draws for one recipe (the store records what each salt drew)."""
    return f"{role}|{recipe.value}"


class LearnerLane:
    """Feeds one learner (see the module docstring)."""

    def __init__(self, host: LearnerHost, store: Any, log: RunLog | None, kept_total: Callable[[], int],
                 salt: str, depth: int = 2) -> None:
        self.host, self.store, self.log, self.kept_total, self.depth = host, store, log, kept_total, depth
        self.salt = salt  # names this learner's batch draws (a role, not an actor name: runs must not depend on names)
        self.phases: deque[_Open] = deque()
        self.waiting: dict[Any, _Pending] = {}  # result ref -> what it was
        self.recipe_steps: dict[Recipe, int] = {}  # steps submitted per recipe (seeds each step's draws)
        self.submitted = 0
        self.done = 0
        self.weights: WeightVersion | None = None
        self.spans: list[Span] = []
        self.idle_since: float | None = time.time()

    # ------------------------------------------------------------ granting
    def grant(self, phase: Phase) -> None:
        """Queue a phase after those already granted."""
        if phase.steps > 0:
            self.phases.append(_Open(phase))

    def extend_live(self, recipe: Recipe, steps: int, make: Callable[[int], Phase]) -> None:
        """Add `steps` to the last granted phase when it is a live one of `recipe`, else grant `make(steps)`."""
        if steps <= 0:
            return
        last = self.phases[-1] if self.phases else None
        if last is not None and last.phase.live and last.phase.recipe is recipe:
            last.phase = replace(last.phase, steps=last.phase.steps + steps)
        else:
            self.grant(make(steps))

    def step_counters(self) -> dict[str, int]:
        """Steps submitted per recipe (they seed each step's draws): saved with a learner's checkpoint."""
        return {recipe.value: n for recipe, n in self.recipe_steps.items()}

    def set_step_counters(self, counters: dict[str, int]) -> None:
        """Continue the step counters a checkpoint saved (`step_counters`)."""
        self.recipe_steps = {Recipe(k): int(v) for k, v in counters.items()}

    def pending_steps(self) -> int:
        """Granted steps not yet submitted."""
        return sum(max(0, o.phase.steps - o.next_step) for o in self.phases)

    def busy(self) -> bool:
        """Work submitted and not reported, or granted and not submitted."""
        return bool(self.waiting) or bool(self.phases)

    def refs(self) -> list[Any]:
        """The result refs this lane waits on."""
        return list(self.waiting)

    # ------------------------------------------------------------ submitting
    def pump(self) -> None:
        """Submit granted steps until `depth` items are in the learner's queue."""
        while self.phases and len(self.waiting) < self.depth:
            current = self.phases[0]
            phase, i = current.phase, current.next_step
            if i >= phase.steps:
                self.phases.popleft()
                continue
            step = self.recipe_steps.get(phase.recipe, 0)
            kept_to = self.kept_total() if phase.live else phase.kept_to
            spec = BatchSpec(phase.source, phase.batch_size, step, draw_salt(self.salt, phase.recipe),
                             0 if phase.live else phase.kept_from, kept_to, phase.seed_share, phase.balanced)
            last = i == phase.steps - 1
            publish = (phase.publish_every > 0 and (i + 1) % phase.publish_every == 0) or (last and phase.publish_at_end)
            self._submit(TrainWork(phase.recipe, self.store.batch.remote(spec), step, publish), phase.log_stage, step,
                         spec, phase.span or f"train:{phase.log_stage}")
            self.recipe_steps[phase.recipe] = step + 1
            current.next_step += 1

    def publish_now(self) -> None:
        """Queue a publish of the current weights (after whatever is queued)."""
        self._submit(PublishWork(), "publish", -1)

    def idle_s(self) -> float:
        """Seconds since the learner last had work in its queue (0 while it has some)."""
        return 0.0 if self.waiting or self.idle_since is None else time.time() - self.idle_since

    def _submit(self, work: Any, stage: str, step: int, spec: BatchSpec | None = None, span: str = "") -> None:
        self.waiting[self.host.start(work)] = _Pending(stage, step, work, spec, span or f"train:{stage}")
        self.submitted += 1

    def collect(self, ref: Any) -> WorkDone | None:
        """Read the finished result `ref` and record it (`on_done`); when the learner's feed died under it,
        wait on the same item's result from the restarted feed instead (None: nothing recorded yet)."""
        try:
            dones: list[WorkDone] = ray.get(ref)
        except FEED_DIED:
            self.waiting[self.host.recover(ref)] = self.waiting.pop(ref)
            return None
        self.host.received(ref)
        return self.on_done(ref, dones)

    def on_done(self, ref: Any, dones: list[WorkDone]) -> WorkDone:
        """Record one reported item; returns rank 0's report."""
        pending = self.waiting.pop(ref)
        stage, step, lead = pending.stage, pending.step, dones[0]
        if lead.error is not None and pending.spec is not None:
            # The store died while drawing this batch: draw it again (the restarted store replays its
            # log, so the same spec draws the same batch) and redo the step.
            work = pending.work
            self._submit(TrainWork(work.recipe, self.store.batch.remote(pending.spec), work.step, work.publish),
                         stage, step, pending.spec, pending.span)
            self.submitted -= 1
            return lead
        self.done += 1
        if not self.waiting:
            self.idle_since = time.time()
        if lead.extra.get("report_lost"):  # done inside the checkpoint of a feed that died: counted, no metrics
            return lead
        if lead.weights is not None:
            self.weights = lead.weights
        self.spans.append(Span(self.host.name, pending.span, lead.started, lead.ended))
        if self.log is not None and step >= 0:
            values = {k: v for k, v in lead.metrics.items() if np.isscalar(v) and np.isfinite(v)}
            # `item`: the feed's index of this step; a `--resume` sets aside records past the checkpoint by it.
            self.log.log(step, {**values, "version": float(lead.version), "item": float(lead.index)}, stage)
        return lead
