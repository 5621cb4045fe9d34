"""The flywheel: MedGR²'s data side and its three learners turning at once, on one actor system.

    image prompts -> generator pool (G) -> scorer pool (R) -> kept-sample store -> batches for G, R and P
         G learner  <- kept stream + seeds  (rejection-sampling fine-tuning; publishes every N steps)
         R learner  <- graded kept + seeds  (refresh; publishes to the scorer pool every N steps)
         P learner  <- kept stream + seeds  (the solver's SFT, while G and R keep turning)

`Flywheel.tick` is the whole event loop: wait for any call to finish (a generate/score/offer chain of the
data lane, or a learner step), advance it, refill every queue, push a status. The two modes differ only
in what they grant and when they wait:
- continuous (`run_continuous`): G and R bootstrap on the seeds while P's SFT starts; generation starts
  once both have published; every kept sample grants G and R a few more steps; the data phase ends when
  P's SFT has taken all its steps.
- rounds (`run_rounds`): the paper's algorithm with barriers — round 0 bootstraps G and R; round k
  generates for a fixed set of images, waits for every candidate, selects over the whole round, then
  fine-tunes G and refreshes R on that round's kept samples and waits; P's SFT runs after the last round.
With `generator_staleness = reward_staleness = 0` nothing a barrier separates can overlap, so the rounds
mode is the synchronous algorithm (tests compare it bit for bit with a hand-written loop).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.algo.requests import CandidateMeta, generator_requests
from medgr2_ray.config import Config
from medgr2_ray.eval.rundata import CycleData
from medgr2_ray.eval.timeline import GENERATOR_REFRESH, REWARD_REFRESH
from medgr2_ray.loop.autoscale import PoolAutoscaler, ScaleSignals
from medgr2_ray.loop.data_lane import DataLane, wait_any
from medgr2_ray.loop.learner_lane import LearnerLane, Phase
from medgr2_ray.messages import (DataStatus, FlywheelStatus, LearnerStatus, OfferReceipt, PoolStatus, Recipe,
                                 SampleSource, Span)
from medgr2_ray.metrics import RunLog
from medgr2_ray.types import GenerationRequest, MedImage, PromptStrategy, TaskType

Progress = Callable[[str, int, int], None]  # (stage, done, total)
STATUS_EVERY_S = 1.0



def prompt_stream(images: Sequence[MedImage], tasks: Sequence[TaskType], strategies: Sequence[PromptStrategy],
                  seed: int) -> Iterator[tuple[GenerationRequest, CandidateMeta]]:
    """Every (image, task, strategy) once per epoch, in a seeded order, forever; ids name the epoch."""
    for epoch in itertools.count():
        order = list(images)
        random.Random(f"{seed}|stream|{epoch}").shuffle(order)
        requests, meta = generator_requests(order, tasks, strategies, None, 0, prefix=f"c{epoch}")
        yield from ((r, meta[r.request_id]) for r in requests)


class Flywheel:
    """Drives an `ActorSystem` built by `build_flywheel` through the data phase (module docstring)."""

    def __init__(self, cfg: Config, system: ActorSystem, data: CycleData, log: RunLog | None,
                 progress: Progress) -> None:
        self.cfg, self.sys, self.data, self.log, self.progress = cfg, system, data, log, progress
        self.lane = DataLane(cfg, system.generator, system.scorer, system.store)  # type: ignore[arg-type]
        self.kept_total = 0
        count = lambda: self.kept_total  # noqa: E731
        self.g = LearnerLane(system.g_learner, system.store, log, count, "generator")  # type: ignore[arg-type]
        self.r = LearnerLane(system.r_learner, system.store, log, count, "reward_model")  # type: ignore[arg-type]
        self.p = LearnerLane(system.learner, system.store, log, count, "policy")
        self.credit = {Recipe.GENERATOR_SFT: 0.0, Recipe.REWARD_GRADE: 0.0}
        self.autoscaler = PoolAutoscaler(system.generator, cfg.generator_pool, cfg.loop)  # type: ignore[arg-type]
        self.started = time.time()
        self.marks: dict[str, float] = {}  # wall-clock moments: "bootstrapped" (G and R first published), "data_end"
        self.phase = "data"
        self.bootstrap_items = (0, 0)  # items G and R must complete before generation starts
        self.sft_resumed = 0  # P's SFT steps a resumed run's checkpoint holds
        self.spans: list[Span] = []
        self._last_status = 0.0
        self._last_receipt = time.time()

    # ------------------------------------------------------------ the event loop
    def tick(self, launch: Callable[[], Any] | None = None) -> None:
        """Wait for any call, advance what finished, refill every queue, report."""
        lanes = (self.g, self.r, self.p)
        refs = self.lane.refs() + [ref for lane in lanes for ref in lane.refs()]
        for ref in wait_any(refs, self.cfg.loop.poll_s):
            if ref in self.lane.flights:
                receipt = self.lane.on_done(ref)
                if receipt is not None:
                    self._on_receipt(receipt)
                continue
            lane = next(x for x in lanes if ref in x.waiting)
            lane.collect(ref)
            self.lane.g_weights = self.g.weights or self.lane.g_weights
            self.lane.r_weights = self.r.weights or self.lane.r_weights
        self.lane.pump()
        for lane in lanes:
            lane.pump()
        if launch is not None:
            launch()
        if time.time() - self._last_status > STATUS_EVERY_S:
            self._last_status = time.time()
            self.sys.monitor.push.remote(self.status())
            self._refresh_weights()
            if self.phase == "data":
                for lane in (self.g, self.r):
                    self.progress(f"{lane.host.name} steps", lane.done, lane.done + len(lane.waiting) + lane.pending_steps())

    def _refresh_weights(self) -> None:
        """Take each learner's newest weights from its feed: a learner restarted by Ray Train publishes
        again at once (what it published before died with it), and the pools must move on to that."""
        for lane in (self.g, self.r, self.p):
            lane.host.check()
            latest = lane.host.latest()
            if latest is not None and lane.weights is not None and latest.version > lane.weights.version:
                lane.weights = latest
        self.lane.g_weights = self.g.weights or self.lane.g_weights
        self.lane.r_weights = self.r.weights or self.lane.r_weights

    def bootstrapped(self) -> bool:
        """G and R took every bootstrap item granted (and so published): generation may start."""
        return (self.g.done >= self.bootstrap_items[0] and self.r.done >= self.bootstrap_items[1]
                and self.g.weights is not None and self.r.weights is not None)

    def run_until(self, busy: Callable[[], bool], launch: Callable[[], Any] | None = None) -> None:
        """Tick until `busy()` is false."""
        while busy():
            self.tick(launch)

    # ------------------------------------------------------------ grants
    def _on_receipt(self, receipt: OfferReceipt) -> None:
        self.kept_total = max(self.kept_total, receipt.kept_total)
        if self.log is not None and receipt.accepted:
            self.log.log(len(self.lane.ledger.receipts), {
                "candidates": receipt.candidates, "kept": receipt.kept, "kept_total": receipt.kept_total,
                "unparseable": receipt.unparseable, "generator_lag": receipt.generator_lag,
                "reward_lag": receipt.reward_lag, "seconds": time.time() - self.started}, "data")
        if self.cfg.cycle.mode == "continuous" and self.phase == "data":
            self._grant_refresh(Recipe.GENERATOR_SFT, self.g, self.cfg.cycle.generator_steps_per_kept * receipt.kept)
            if self.cfg.cycle.rm_retrain:
                self._grant_refresh(Recipe.REWARD_GRADE, self.r, self.cfg.cycle.rm_steps_per_kept * receipt.kept)
        waited = time.time() - self._last_receipt
        self._last_receipt = time.time()
        backlog = len(self.lane.unscored) / max(1, len(self.sys.generator.members))  # type: ignore[union-attr]
        self.autoscaler.observe(ScaleSignals(learner_wait_s=waited if not self.g.busy() else 0.0,
                                             buffer_fill=min(1.0, backlog / 2)))

    def _grant_refresh(self, recipe: Recipe, lane: LearnerLane, credit: float) -> None:
        """Turn credit (steps per kept sample) into whole live steps on the kept stream mixed with seeds."""
        self.credit[recipe] += credit
        steps = math.floor(self.credit[recipe])
        self.credit[recipe] -= steps
        stage, span = (("generator_sft", GENERATOR_REFRESH) if recipe is Recipe.GENERATOR_SFT
                       else ("reward_model", REWARD_REFRESH))
        lane.extend_live(recipe, steps, lambda n: Phase(
            recipe, SampleSource.SEEDS_AND_KEPT, n, self.cfg.cycle.batch_size, stage, live=True,
            seed_share=self.cfg.cycle.seed_share, publish_every=self.cfg.cycle.publish_every, publish_at_end=False,
            span=span))

    def bootstrap(self, done: dict[Recipe, int] | None = None) -> None:
        """Round 0: G learns to write samples from the seeds; R learns to answer, then to grade; both publish.
        `done`: training steps per recipe a resumed run's checkpoints hold (only the rest is granted)."""
        cyc, done = self.cfg.cycle, done or {}
        left = lambda recipe, steps: max(0, steps - done.get(recipe, 0))  # noqa: E731
        g_steps = left(Recipe.GENERATOR_SFT, cyc.generator_bootstrap_steps)
        self.g.grant(Phase(Recipe.GENERATOR_SFT, SampleSource.SEEDS, g_steps, cyc.batch_size,
                           "generator_sft", span="train:generator_bootstrap"))
        if g_steps == 0:
            self.g.publish_now()  # generation starts from what G is, but only once it is published
        if cyc.rm_verifier and cyc.rm_answer_steps:
            self.r.grant(Phase(Recipe.REWARD_ANSWER, SampleSource.SEEDS, left(Recipe.REWARD_ANSWER, cyc.rm_answer_steps),
                               cyc.batch_size, "reward_model", publish_at_end=False, span="train:reward_bootstrap"))
        r_steps = left(Recipe.REWARD_GRADE, cyc.rm_bootstrap_steps)
        self.r.grant(Phase(Recipe.REWARD_GRADE, SampleSource.SEEDS, r_steps, cyc.batch_size,
                           "reward_model", span="train:reward_bootstrap"))
        if r_steps == 0:
            self.r.publish_now()
        self.bootstrap_items = (self.g.submitted + self.g.pending_steps(), self.r.submitted + self.r.pending_steps())

    def resume(self) -> dict[Recipe, int]:
        """`--resume` of a continuous run: each learner's step counters continue from its newest checkpoint
        (steps after it are redone), the kept count from the store's replayed log; returns the steps done."""
        done: dict[Recipe, int] = {}
        for lane in (self.g, self.r, self.p):
            lane.set_step_counters(lane.host.resumed.recipe_steps)
            done.update(lane.recipe_steps)
        self.kept_total = int(ray.get(self.sys.store.status.remote()).kept)
        self.sft_resumed = done.get(Recipe.SOLVER_SFT, 0)
        return done

    def grant_solver_sft(self, live: bool, steps: int | None = None) -> None:
        """P's SFT (`steps`, default all): every modality equally likely, on the seeds (unless turned off)
        and the kept samples."""
        solver = self.cfg.solver
        source = SampleSource.SEEDS_AND_KEPT if solver.include_seeds else SampleSource.KEPT
        self.p.grant(Phase(Recipe.SOLVER_SFT, source, solver.sft_steps if steps is None else steps,
                           solver.sft_batch_size, "solver_sft", live=live, kept_to=self.kept_total, balanced=True,
                           publish_at_end=False))

    # ------------------------------------------------------------ the two modes
    def run_continuous(self, budget_s: float | None = None, resume: bool = False) -> None:
        """The continuous flywheel (module docstring); returns when P's SFT is done and the data drained.
        With `budget_s` (benchmarks, tests) there is no solver: generation runs for `budget_s` seconds
        after both bootstraps published, then the data drains. `resume`: continue a killed run (`resume`):
        only the steps its checkpoints do not hold are granted, and prompts whose ids the store already
        accepted are skipped (the same seeded stream otherwise; requests in flight at the kill are
        generated again). Not bit-identical to an uninterrupted run: G and R's refresh credit for samples
        kept before the kill is not granted again, and the steps after each checkpoint are redone on
        batches drawn from the kept samples as they are now."""
        done = self.resume() if resume else {}
        self.bootstrap(done)
        solver = self.cfg.solver
        sft_done = done.get(Recipe.SOLVER_SFT, 0)
        warm = round(solver.sft_steps * solver.sft_warmup_share) if solver.include_seeds else 0
        if budget_s is None:
            self.grant_solver_sft(live=True, steps=max(0, warm - sft_done))
        accepted = set(ray.get(self.sys.store.accepted_ids.remote())) if resume else set()
        stream = (p for p in prompt_stream(self.data.train, [TaskType(t) for t in self.cfg.cycle.tasks],
                                           [PromptStrategy(s) for s in self.cfg.cycle.strategies], self.cfg.run.seed)
                  if p[0].request_id not in accepted)

        def launch() -> None:
            if not self.bootstrapped():  # generation waits for both bootstraps
                return
            if "bootstrapped" not in self.marks:
                self.marks["bootstrapped"] = time.time()
                if budget_s is None:  # the rest of P's SFT trains on the kept stream as it grows
                    self.grant_solver_sft(live=True, steps=solver.sft_steps - max(warm, sft_done))
            self.lane.launch(stream, self.g.weights.version)

        if budget_s is None:
            self.run_until(lambda: self._solver_busy("data + solver SFT") or "bootstrapped" not in self.marks, launch)
        else:
            self.run_until(lambda: not self.bootstrapped(), launch)
            until = time.time() + budget_s
            self.run_until(lambda: time.time() < until, launch)
        self.phase = "drain"
        self.g.phases.clear()
        self.r.phases.clear()
        # Drain: what is in flight lands; calls whose actor died are re-issued, nothing new starts.
        self.run_until(lambda: not self.lane.idle() or self.g.busy() or self.r.busy(),
                       lambda: self.lane.launch(iter(()), 0))
        self.marks["data_end"] = time.time()
        self._publish_final()

    def _publish_final(self) -> None:
        """G and R publish what they ended with (the scorer pool scores GRPO with the newest R)."""
        for lane in (self.g, self.r):
            lane.publish_now()
        self.run_until(lambda: self.g.busy() or self.r.busy())
        self.lane.r_weights = self.r.weights or self.lane.r_weights

    def run_round(self, k: int, images: Sequence[MedImage]) -> dict[str, Any]:
        """Round k of the rounds mode: generate for `images`, wait, select, fine-tune G and refresh R, wait."""
        cyc = self.cfg.cycle
        ray.get(self.sys.store.open_round.remote(k))
        requests, meta = generator_requests(images, [TaskType(t) for t in cyc.tasks],
                                            [PromptStrategy(s) for s in cyc.strategies], None, k)
        prompts = iter([(r, meta[r.request_id]) for r in requests])
        ids = set(meta)

        def waiting() -> bool:
            done = len(ids & self.lane.ledger.closed)
            self.progress(f"round {k}: generate + score", done, len(ids))
            return done < len(ids)

        self.run_until(waiting, lambda: self.lane.launch(prompts, k))
        summary = ray.get(self.sys.store.close_round.remote(k))
        self.kept_total = int(summary["kept_to"])
        if summary["kept"]:
            kept = dict(kept_from=int(summary["kept_from"]), kept_to=int(summary["kept_to"]))
            self.g.grant(Phase(Recipe.GENERATOR_SFT, SampleSource.KEPT, cyc.generator_rft_steps, cyc.batch_size,
                               "generator_sft", span=GENERATOR_REFRESH, **kept))
            if cyc.rm_retrain:
                self.r.grant(Phase(Recipe.REWARD_GRADE, SampleSource.KEPT, cyc.rm_refresh_steps, cyc.batch_size,
                                   "reward_model", span=REWARD_REFRESH, **kept))
        self.train_generator_and_reward(f"round {k}: G and R training")
        return summary

    def train_generator_and_reward(self, stage: str) -> None:
        """Wait until G and R have taken every step granted (a barrier), reporting progress as `stage`."""
        def busy() -> bool:
            waiting = len(self.g.waiting) + len(self.r.waiting)
            done = self.g.done + self.r.done
            self.progress(stage, done, done + waiting + self.g.pending_steps() + self.r.pending_steps())
            return self.g.busy() or self.r.busy()

        self.run_until(busy)
        self.lane.g_weights, self.lane.r_weights = self.g.weights, self.r.weights

    def train_solver(self) -> None:
        """Rounds mode: P's SFT after the last round, on everything kept (and the seeds)."""
        self.phase = "solver_sft"
        self.grant_solver_sft(live=False)
        self.run_until(lambda: self._solver_busy("solver SFT"))

    # ------------------------------------------------------------ status
    def _solver_busy(self, stage: str) -> bool:
        """Report P's SFT progress; whether it still has steps to take."""
        self.progress(stage, self.sft_resumed + self.p.done, self.cfg.solver.sft_steps)
        return self.p.busy()

    def status(self) -> FlywheelStatus:
        """The live state for `medgr2 status` (every pool and learner, the data side's rates)."""
        seconds = time.time() - self.started
        pools = tuple(PoolStatus(p.name, len(p.members), p.num_ready, sum(m.in_flight for m in p.members),
                                 tuple(m.info.weight_version for m in p.members if m.info is not None))
                      for p in (self.sys.generator, self.sys.scorer, self.sys.rollout) if p is not None)
        learners = tuple(LearnerStatus(lane.host.name, lane.weights.version if lane.weights else 0, lane.done,
                                       lane.submitted, lane.idle_s(), 0)
                         for lane in (self.g, self.r, self.p))
        receipts = self.lane.ledger.receipts
        candidates, kept = sum(r.candidates for r in receipts), sum(r.kept for r in receipts)
        last = receipts[-8:]
        lag = lambda key: sum(getattr(r, key) for r in last) / len(last) if last else 0.0  # noqa: E731
        data = DataStatus(candidates, kept, candidates / max(seconds, 1e-9), kept / max(seconds, 1e-9),
                          self.lane.in_flight(), self.lane.ledger.reissued, lag("generator_lag"), lag("reward_lag"))
        return FlywheelStatus(self.cfg.run.name, self.phase, seconds, pools, learners, data)
