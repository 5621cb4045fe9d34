"""The continuous asynchronous GRPO loop: generation, scoring and learning overlap, one screen to read.

`Controller.run` is an event loop over object refs (slime's train_async.py in spirit). Each prompt goes
generate (a RolloutActor) -> score (a ScorerActor) -> put (the RolloutBuffer). With `loop.chain_calls`
the three are submitted at once, each taking the previous one's result ref: Ray hands the rollouts and
scored groups on as soon as they exist, without a round trip through this process (scorers run calls
in the order their inputs arrive, so a chained call never holds up a ready one). The data moves between
actors through the object store, never through this process. Whenever the learner is idle and the
buffer holds, or the puts in flight will bring, a batch of fresh groups, the next step is queued; with
`loop.take_ahead` its batch is a `take` that Ray runs right after those puts, so the learner starts the
moment its groups arrive. Its rank 0 publishes new weights that the next generate calls carry; with
`loop.generate_ahead` the prompts the step's end will admit are submitted as it is queued, each generate
taking the step's result ref, so they start with its new weights as soon as it publishes.

Staleness. A prompt launched now is trained after the steps already running and the `queued // n`
full batches ahead of it (n groups a step); each step advances the version by at most one (a skipped
step: zero), so its staleness is at most their sum, and it is launched only if that is within
`max_staleness`. So `max_staleness=0` launches a step's prompts only after the previous step
published: exactly the synchronous algorithm. Prompts chained on a queued step are admitted by the state
that step leaves (algo/admission.py: `launchable_after_step`): at staleness 0, the same prompts, in the
same calls, with the same weights as once the step is seen done. The buffer still enforces the bound (groups that fell
behind, e.g. after a restart, are dropped and counted). Back-pressure: groups in flight plus buffered
never exceed `grpo.buffer_size`.

Faults. A generate/score/put chain that fails because an actor died (Ray restarts it, `max_restarts`)
puts its requests back at the head of the queue: re-issued, counted, and deduplicated by id in the
buffer, so the trained ids prove nothing was lost or trained twice. A step that trained nothing fails
the generates chained on it (`StepNotDone`): their requests are re-issued the same way. A learner step
whose feed died (Ray restarts it) is read as the flywheel's lanes read theirs: `LearnerHost.recover`
re-submits what the feed lost and the step's result is waited for again (read once: `received`); the
generates chained on the dead result ref fail with it, and their requests are re-issued the same way
(once: only the put carrying them reports it), without blaming the rollout or scorer actors. Checkpoints (`checkpoint`) hold the
learner, the buffer, the prompt cursor and the requests in flight, and `resume` continues from them.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray

from medgr2_ray.actors.learner_host import FEED_DIED
from medgr2_ray.actors.persist import load_messages, save_messages
from medgr2_ray.actors.pool import Member
from medgr2_ray.actors.rollout import StepNotDone
from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.algo.admission import AdmissionState, launchable, launchable_after_step
from medgr2_ray.config import Config
from medgr2_ray.loop.autoscale import PoolAutoscaler, ScaleSignals
from medgr2_ray.loop.grpo_flights import Flight, Ledger, Stage
from medgr2_ray.messages import (
    BufferSnapshot,
    CallTime,
    GRPOAccounting,
    LoopStatus,
    PoolStatus,
    PutReceipt,
    Recipe,
    Span,
    StepReport,
    TakeResult,
    TrainWork,
    WorkDone,
)
from medgr2_ray.metrics import LEARNER_WAIT_S, REQUESTS_REISSUED, Metrics, RunLog
from medgr2_ray.types import GenerationRequest, SamplingParams, WeightVersion

MAX_CALLS_PER_ACTOR = 2  # one running, one queued: an actor never idles between calls
MAX_TIMINGS = 100_000  # call and step timings kept for the benchmarks (the newest)
STATUS_EVERY_S = 1.0  # `medgr2 status` snapshots pushed to the monitor at most this often (and at the end)


class Controller:
    """Drives an `ActorSystem` through `steps` asynchronous GRPO steps (see the module docstring)."""

    def __init__(self, cfg: Config, system: ActorSystem, requests: Sequence[GenerationRequest],
                 run_dir: str | Path | None = None) -> None:
        if not requests:
            raise ValueError("the controller needs at least one prompt")
        self.cfg, self.sys, self.prompts = cfg, system, list(requests)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = RunLog(self.run_dir) if self.run_dir is not None else None
        self.n = cfg.grpo.prompts_per_step
        self.sampling = SamplingParams(n=cfg.grpo.group_size, temperature=cfg.grpo.temperature,
                                       max_new_tokens=cfg.grpo.max_new_tokens)
        self.cursor, self.steps_started, self.steps_done = 0, 0, 0
        self.retry: deque[GenerationRequest] = deque()
        self.flights: dict[Any, Flight] = {}
        self.unscored: deque[tuple[Any, Flight]] = deque()  # generated, waiting for a ready scorer
        self.buffered: Counter[int] = Counter()
        self.snapshot_seq = 0
        self.ledger = Ledger()
        self.weights: WeightVersion = system.learner.publish()
        self.ledger.published.append(self.weights.version)
        self.idle_since: float | None = time.perf_counter()
        self.last_wait = 0.0
        self.started = time.perf_counter()
        self.autoscaler = PoolAutoscaler(system.rollout, cfg.rollout_pool, cfg.loop)
        self.metrics = Metrics()
        self.spans: list[Span] = []  # the learner's busy spans, for the run's timeline
        self.in_buffer: dict[str, GenerationRequest] = {}  # groups the buffer holds: re-issued if it dies
        self.buffer_pid = ray.get(system.buffer.ready.remote()).pid
        self.on_step: Callable[[int], None] | None = None
        self.unreported: list[tuple[StepReport, float]] = []  # steps done, not yet logged (once new work is out)
        # Where the time goes (benchmarks/orchestration_overhead.py): every call's submit and finish as this
        # process saw them, rank 0's report of every step, this process's waiting and CPU seconds in `run`.
        self.calls: deque[CallTime] = deque(maxlen=MAX_TIMINGS)
        self.step_dones: deque[WorkDone] = deque(maxlen=MAX_TIMINGS)
        self.waited_s, self.driver_cpu_s = 0.0, 0.0
        self.take_after: set[Any] = set()  # puts in flight that the learner's queued step takes its batch after
        self.failed_steps: set[Any] = set()  # result refs of learner steps that trained nothing
        self.status_pushed = 0.0

    # ------------------------------------------------------------------ the loop
    def run(self, steps: int, on_step: Callable[[int], None] | None = None) -> Ledger:
        """Run until `steps` learner steps are done in total (counting steps before a resume);
        `on_step(steps_done)` after each step (progress bars)."""
        self.on_step = on_step
        cpu = time.thread_time()
        try:
            while self.steps_done < steps:
                self.sys.rollout.poll_ready()
                self.sys.scorer.poll_ready()
                while self.unscored and self._submit_score(*self.unscored[0]):
                    self.unscored.popleft()
                self._launch_generation(steps)
                self._maybe_start_step(steps)
                self._report_steps()  # after the next work is out: logging never delays it
                started = time.perf_counter()
                if not self.flights:  # nothing running: wait for an actor to (re)start instead
                    self.sys.rollout.poll_ready(self.cfg.loop.poll_s)
                    self.sys.scorer.poll_ready(self.cfg.loop.poll_s)
                    self.waited_s += time.perf_counter() - started
                    continue
                done, _ = ray.wait(list(self.flights), num_returns=1, timeout=self.cfg.loop.poll_s, fetch_local=False)
                self.waited_s += time.perf_counter() - started
                for ref in done:
                    self._on_done(ref, self.flights.pop(ref))
            self._report_steps()
            self._push_status()
        finally:
            self.driver_cpu_s += time.thread_time() - cpu
        return self.ledger

    # ------------------------------------------------------------------ generation side
    def _in_flight(self) -> list[Flight]:
        """Calls that carry requests (a chained call's requests are carried by its last stage)."""
        return ([f for f in self.flights.values() if f.stage is not Stage.LEARN and not f.chained]
                + [f for _, f in self.unscored])

    def _in_flight_groups(self) -> int:
        return sum(len(f.requests) for f in self._in_flight())

    def _admission(self, steps: int, started: int) -> AdmissionState:
        return AdmissionState(
            max_staleness=self.cfg.grpo.max_staleness, prompts_per_step=self.n, buffer_size=self.cfg.grpo.buffer_size,
            total_steps=steps, steps_started=started, steps_done=self.steps_done,
            version=self.weights.version, in_flight=self._in_flight_groups(),
            buffered=tuple(sorted(self.buffered.items())))

    def _launchable(self, steps: int) -> int:
        """How many more prompts may start now (staleness bound, back-pressure, end of run: algo/admission.py)."""
        # A step queued ahead has not started while the puts it takes after are in flight: its groups are
        # still counted as queued, and it takes the first of them (as a step started once they arrived).
        return launchable(self._admission(steps, self.steps_started - (1 if self.take_after else 0)))

    def _next_request(self) -> GenerationRequest:
        if self.retry:
            return self.retry.popleft()
        base = self.prompts[self.cursor % len(self.prompts)]
        # Ids sort in cursor order and are unique across epochs over the prompt list.
        request = replace(base, request_id=f"r{self.cursor:08d}:{base.request_id}")
        self.cursor += 1
        return request

    def _launch_generation(self, steps: int, budget: int | None = None, after: Any = None) -> None:
        """Submit generate calls for `budget` prompts (default: what may start now); with `after` (a queued
        learner step's result ref) each call waits for that step and generates with its new weights."""
        budget = self._launchable(steps) if budget is None else budget
        while budget > 0:
            member = self.sys.rollout.least_busy(MAX_CALLS_PER_ACTOR)
            if member is None:
                return
            batch = tuple(self._next_request() for _ in range(min(budget, self.cfg.loop.requests_per_call)))
            seed = zlib.crc32(f"{self.cfg.run.seed}:{batch[0].request_id}".encode())  # same prompts, same samples
            now, sampling = time.time(), replace(self.sampling, seed=seed)
            if after is None:
                ref = member.handle.generate.remote(list(batch), sampling, self.weights)
            else:
                ref = member.handle.generate_after.remote(list(batch), sampling, self.weights, after)
            member.in_flight += 1
            flight = self.flights[ref] = Flight(Stage.GENERATE, batch, member, after=after, submitted=now)
            if self.cfg.loop.chain_calls and not self.unscored:
                self._submit_score(ref, flight)
            budget -= len(batch)

    def _on_done(self, ref: Any, flight: Flight) -> None:
        if flight.stage is Stage.LEARN:
            self._on_learn(ref, flight)
            return
        self.calls.append(CallTime(flight.stage.value, flight.submitted, time.time()))
        if flight.member is not None:
            flight.member.in_flight -= 1
        if flight.stage is Stage.GENERATE:
            if not flight.chained and (self.unscored or not self._submit_score(ref, flight)):
                self.unscored.append((ref, flight))
        elif flight.stage is Stage.SCORE:
            if not flight.chained:
                self._submit_put(ref, flight)
        elif flight.stage is Stage.PUT:
            self.take_after.discard(ref)
            self._on_put(ref, flight)

    def _submit_score(self, gen_ref: Any, flight: Flight) -> bool:
        """Send the rollouts of `gen_ref` (done, or chained on it) to the least busy ready scorer, and with
        `chain_calls` the scores on to the buffer; False when no scorer is ready (starting or restarting)."""
        member = self.sys.scorer.least_busy(max_in_flight=1 << 30)
        if member is None:
            return False
        now = time.time()
        ref = member.handle.score.remote(list(flight.requests), gen_ref)
        member.in_flight += 1
        flight.chained = True
        score = self.flights[ref] = Flight(Stage.SCORE, flight.requests, member, chain=(flight.member, member),  # type: ignore[arg-type]
                                           after=flight.after, submitted=now)
        if self.cfg.loop.chain_calls:
            self._submit_put(ref, score)
        return True

    def _submit_put(self, score_ref: Any, flight: Flight) -> None:
        flight.chained, now = True, time.time()
        self.flights[self.sys.buffer.put.remote(score_ref)] = Flight(Stage.PUT, flight.requests, chain=flight.chain,
                                                                     after=flight.after, submitted=now)

    def _on_put(self, ref: Any, flight: Flight) -> None:
        try:
            receipt: PutReceipt = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.RayTaskError) as exc:
            # An actor of the chain (rollout, scorer or the buffer) died: do the requests again (Ray restarts
            # it); or the learner step a generate was chained on trained nothing (the actors are fine).
            feed_died = self.sys.learner.feed_died_in(exc)  # the learner step a generate was chained on
            self._reissue(list(flight.requests), "the learner's feed died" if feed_died else type(exc).__name__)
            if not isinstance(exc, StepNotDone) and not feed_died:
                self._suspect(flight.chain)
            self._check_buffer()
            return
        by_id = {r.request_id: r for r in flight.requests}
        self.in_buffer.update({i: by_id[i] for i in receipt.accepted_ids if i in by_id})
        self.ledger.duplicate_ids.extend(receipt.duplicate_ids)
        self.ledger.uniform_ids.extend(receipt.uniform_ids)
        self.ledger.rollout_versions.update(receipt.accepted_versions)
        self._take_snapshot(receipt.snapshot)

    def _reissue(self, requests: list[GenerationRequest], why: str) -> None:
        self.retry.extendleft(reversed(requests))
        self.ledger.reissued += len(requests)
        self.metrics.record(REQUESTS_REISSUED, len(requests), pool="chain")
        print(f"[controller] re-issuing {len(requests)} requests after {why}", flush=True)

    def _check_buffer(self) -> None:
        """If the buffer died and came back (empty), every group it held is generated again: the ids of
        groups already trained are never re-issued, so nothing is lost or trained twice."""
        info = ray.get(self.sys.buffer.ready.remote())
        if info.pid == self.buffer_pid:
            return
        self.buffer_pid = info.pid
        lost = sorted(self.in_buffer.values(), key=lambda r: r.request_id)
        self.in_buffer.clear()
        self.snapshot_seq, self.buffered = 0, Counter()
        if lost:
            self._reissue(lost, "the rollout buffer restarted")

    def _suspect(self, chain: tuple[Member, ...]) -> None:
        """Take the chain's actors out of rotation until they answer `ready()` (Ray restarts a dead one)."""
        for member in chain:
            for pool in (self.sys.rollout, self.sys.scorer):
                pool.suspect(member)

    def _take_snapshot(self, snapshot: BufferSnapshot) -> None:
        if snapshot.seq > self.snapshot_seq:
            self.snapshot_seq, self.buffered = snapshot.seq, Counter(snapshot.versions)

    # ------------------------------------------------------------------ learner side
    def _maybe_start_step(self, steps: int) -> None:
        if any(f.stage is Stage.LEARN for f in self.flights.values()) or self.steps_started >= steps:
            return
        fresh = sum(c for v, c in self.buffered.items() if self.weights.version - v <= self.cfg.grpo.max_staleness)
        after = self._puts_bringing(self.n - fresh) if fresh < self.n else []
        if fresh < self.n and not after:
            return
        now = time.time()
        take = self.sys.buffer.take.remote(self.n, self.weights.version, self.cfg.grpo.max_staleness, *after,
                                           exact=bool(after))
        ref = self.sys.learner.start(TrainWork(Recipe.SOLVER_GRPO, take, self.steps_started, publish=True))
        self.flights[ref] = Flight(Stage.LEARN, (), submitted=now, take=take)
        self.take_after = set(after)
        self.steps_started += 1
        if self.cfg.loop.generate_ahead:  # now, while this process's view of the buffer is from before the take
            budget = launchable_after_step(self._admission(steps, self.steps_started))
            self._launch_generation(steps, budget, after=ref)
        self.last_wait = time.perf_counter() - (self.idle_since or time.perf_counter())  # + the batch's wait

    def _puts_bringing(self, groups: int) -> list[Any]:
        """Refs of the oldest puts in flight that bring at least `groups` groups, for a take ahead ([] when
        those in flight bring fewer, or a put may be refused in part: dynamic sampling)."""
        if not self.cfg.loop.take_ahead or self.cfg.grpo.dynamic_sampling:
            return []
        refs, count = [], 0
        for ref, flight in self.flights.items():  # in submission order
            if flight.stage is Stage.PUT and flight.after not in self.failed_steps:
                refs.append(ref)
                count += len(flight.requests)
                if count >= groups:
                    return refs
        return []

    def _on_learn(self, ref: Any, flight: Flight) -> None:
        """Read a learner step's result; if the learner's feed died under it, wait for the same step's
        result from the restarted feed instead (`LearnerHost.recover`, as the flywheel's lanes do)."""
        try:
            dones: list[WorkDone] = ray.get(ref)
        except FEED_DIED:
            # The generates chained on `ref` fail with it: no step may take its batch after their puts.
            self.failed_steps.add(ref)
            self.flights[self.sys.learner.recover(ref)] = flight
            return
        self.sys.learner.received(ref)
        self.calls.append(CallTime(flight.stage.value, flight.submitted, time.time()))
        if dones[0].extra.get("report_lost"):
            dones = self._lost_report(dones, flight.take)
        self._on_step(ref, dones)

    def _lost_report(self, dones: list[WorkDone], take_ref: Any) -> list[WorkDone]:
        """The step is inside the checkpoint of a feed that died before its report arrived here: done, once,
        its metrics gone. Which groups it trained is its batch, the take this process still holds."""
        lead = dones[0]
        try:
            take: TakeResult = ray.get(take_ref)
        except ray.exceptions.RayError as exc:  # its batch was lost: the step trained nothing
            return [replace(lead, error=f"{type(exc).__name__}: the batch is lost")]
        latest = self.sys.learner.latest()  # the step's own publish died with the feed
        weights = latest if latest is not None and latest.version > self.weights.version else None
        groups = take.batch.groups
        report = StepReport(0, take.batch.learner_version, lead.version, take.group_ids,
                            tuple(g.weight_version for g in groups), take.dropped_stale_ids, {}, 0.0, weights,
                            take.snapshot)
        return [replace(lead, step_report=report, weights=weights)]

    def _on_step(self, ref: Any, dones: list[WorkDone]) -> None:
        if dones[0].error is not None:  # the buffer died, or a take ahead came up short: no step happened
            self.failed_steps.add(ref)  # the generates chained on it fail (StepNotDone): no step takes after them
            self.steps_started -= 1
            self.take_after.clear()
            self._check_buffer()
            return
        reports = [d.step_report for d in dones if d.step_report is not None]
        lead = reports[0]
        self.idle_since = time.perf_counter()
        self.steps_done += 1
        self.step_dones.append(replace(dones[0], weights=None))  # timings: its ref would keep the version stored
        self.last_wait += dones[0].metrics.get("batch_wait_s", 0.0)
        self.metrics.record(LEARNER_WAIT_S, self.last_wait)
        self.spans.append(Span(self.sys.learner.name, "train:grpo", dones[0].started, dones[0].ended))
        for report in reports:
            self.ledger.trained_ids.extend(report.group_ids)
            for group_id in report.group_ids:
                self.in_buffer.pop(group_id, None)
            self.ledger.staleness.extend(lead.learner_version - v for v in report.group_versions)
        self.ledger.dropped_stale_ids.extend(lead.dropped_stale_ids)
        for group_id in lead.dropped_stale_ids:
            self.in_buffer.pop(group_id, None)
        if lead.buffer_snapshot is not None:
            self._take_snapshot(lead.buffer_snapshot)
        self.ledger.rewards.append(lead.metrics.get("reward_mean", float("nan")))
        if dones[0].weights is not None:
            self.weights = dones[0].weights
            self.ledger.published.append(self.weights.version)
        self.buffered = Counter({v: c for v, c in self.buffered.items()
                                 if self.weights.version - v <= self.cfg.grpo.max_staleness})
        fill = sum(self.buffered.values()) / self.cfg.grpo.buffer_size
        self.autoscaler.observe(ScaleSignals(learner_wait_s=self.last_wait, buffer_fill=fill))
        self.unreported.append((lead, self.last_wait))
        every = self.cfg.loop.checkpoint_every
        if self.run_dir is not None and every and self.steps_done % every == 0:
            # Here, before the next step is queued: the learner's checkpoint item must not wait behind it.
            self._report_steps()
            self.checkpoint(self.run_dir / "checkpoints" / f"step_{self.steps_done:06d}")

    def _report_steps(self) -> None:
        """Log the steps done since the last call (the run log, the monitor, `on_step`)."""
        done = self.steps_done - len(self.unreported)
        for k, (lead, waited) in enumerate(self.unreported, start=1):
            self._report(lead, done + k, waited)
            if self.on_step is not None:
                self.on_step(done + k)
        if self.unreported and time.perf_counter() - self.status_pushed >= STATUS_EVERY_S:
            self._push_status()
        self.unreported.clear()

    def _push_status(self) -> None:
        self.sys.monitor.push.remote(self.status())
        self.status_pushed = time.perf_counter()

    def _report(self, lead: StepReport, step: int, waited: float) -> None:
        values = {k: v for k, v in lead.metrics.items() if np.isscalar(v)}
        values.update(learner_wait_s=waited, version=float(self.weights.version),
                      buffered=float(sum(self.buffered.values())), reissued=float(self.ledger.reissued),
                      dropped_stale=float(len(self.ledger.dropped_stale_ids)), rollout_workers=len(self.sys.rollout.members))
        if self.log is not None:
            self.log.log(step, values)

    def status(self) -> LoopStatus:
        """A snapshot for `medgr2 status`."""
        seconds = time.perf_counter() - self.started
        pools = tuple(
            PoolStatus(p.name, len(p.members), p.num_ready, sum(m.in_flight for m in p.members),
                       tuple(m.info.weight_version for m in p.members if m.info is not None))
            for p in (self.sys.rollout, self.sys.scorer)
        )
        return LoopStatus(
            run=self.cfg.run.name, step=self.steps_done, steps=self.cfg.grpo.steps, version=self.weights.version,
            buffer_depth=sum(self.buffered.values()), buffer_capacity=self.cfg.grpo.buffer_size,
            in_flight_groups=self._in_flight_groups(), groups_trained=len(self.ledger.trained_ids),
            groups_dropped_stale=len(self.ledger.dropped_stale_ids), requests_reissued=self.ledger.reissued,
            reward_mean=self.ledger.rewards[-1] if self.ledger.rewards else float("nan"),
            samples_per_s=len(self.ledger.trained_ids) * self.cfg.grpo.group_size / max(seconds, 1e-9),
            seconds=seconds, pools=pools,
        )

    def outstanding_ids(self) -> list[str]:
        """Requests issued but not yet in the buffer (in flight or waiting to be re-issued)."""
        return [r.request_id for f in self._in_flight() for r in f.requests] + [r.request_id for r in self.retry]

    def accounting(self) -> GRPOAccounting:
        """Where every issued request went (call while the buffer lives): the no-loss, no-double proof."""
        issued = tuple(f"r{i:08d}:{self.prompts[i % len(self.prompts)].request_id}" for i in range(self.cursor))
        return GRPOAccounting(issued, tuple(self.ledger.trained_ids), tuple(self.ledger.dropped_stale_ids),
                              tuple(self.ledger.uniform_ids), tuple(ray.get(self.sys.buffer.queued_ids.remote())),
                              tuple(self.outstanding_ids()), self.ledger.reissued)

    # ------------------------------------------------------------------ checkpoint / resume
    def checkpoint(self, directory: str | Path) -> Path:
        """Learner (weights, optimizer, RNG, version), buffer, cursor and the requests still in flight."""
        path = Path(directory)
        self.sys.learner.save_checkpoint(path / "learner", {"steps_done": self.steps_done})
        ray.get(self.sys.buffer.save.remote(str(path / "buffer")))
        pending = [r for f in self._in_flight() for r in f.requests] + list(self.retry)
        save_messages(path / "controller", {
            "cursor": self.cursor, "steps_done": self.steps_done, "pending": sorted(pending, key=lambda r: r.request_id),
            "trained_ids": self.ledger.trained_ids, "dropped_stale_ids": self.ledger.dropped_stale_ids,
            "reissued": self.ledger.reissued, "rewards": [float(r) for r in self.ledger.rewards],
        })
        return path

    def resume(self, directory: str | Path) -> None:
        """Continue from `checkpoint(directory)`: in-flight requests of then are issued again first."""
        path = Path(directory)
        if self.flights or self.unscored or self.steps_done:
            raise RuntimeError("resume a fresh controller, before run()")
        self.sys.learner.load_checkpoint(path / "learner")
        stats = ray.get(self.sys.buffer.load.remote(str(path / "buffer")))
        state = load_messages(path / "controller")
        self.cursor, self.steps_done = int(state["cursor"]), int(state["steps_done"])
        self.steps_started = self.steps_done
        self.retry = deque(state["pending"])
        self.ledger.trained_ids = list(state["trained_ids"])
        self.ledger.dropped_stale_ids = list(state["dropped_stale_ids"])
        self.ledger.reissued = int(state["reissued"])
        self.ledger.rewards = list(state["rewards"])
        self.buffered = Counter(stats.versions)
        self.weights = self.sys.learner.publish()
        self.ledger.published.append(self.weights.version)

    def close(self) -> None:
        """Flush the run log; ask the actors to send the timeline spans they batched (not waited for)."""
        for member in (*self.sys.rollout.members, *self.sys.scorer.members):
            member.handle.ready.remote()
        self.sys.buffer.ready.remote()
        if self.log is not None:
            self.log.close()
