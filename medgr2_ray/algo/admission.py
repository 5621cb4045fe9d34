"""Admission arithmetic of the asynchronous loops: how much new work may start now, and what is too old.

`launchable` is the GRPO controller's rule, written once as a pure function of a frozen snapshot of
its inputs (loop/controller.py builds the snapshot and calls it). Three limits, the tightest wins:

  staleness  A prompt launched now is trained after the steps already running (started - done) and
             the `queued // n` full batches ahead of it (queued = groups in flight + fresh buffered
             groups; n = prompts per step). Each step advances the weight version by at most one (a
             skipped step: zero), so its lag is at most their sum; it may start only if that is within
             `max_staleness`: queued + launched <= (max_staleness - running + 1) * n. With
             `max_staleness=0` one step's prompts start only once the previous step has published:
             the synchronous algorithm.
  capacity   groups in flight plus all buffered groups (fresh or not) never exceed `buffer_size`.
  end        no more prompts than the steps not yet started will train: queued + launched <=
             (total_steps - started) * n.

`launchable_after_step` is the same rule for prompts chained on the step just queued (`loop.generate_ahead`):
they start generating only once that step has finished, with the weights it published, so they are
admitted by the state the step leaves (see its docstring).

`too_stale` is the per-role predicate the flywheel applies to a candidate's G version, a score's R
version and a GRPO group's P version, each with its own bound (`StalenessBounds`); the GRPO buffer's
"fresh" is its negation. Pure Python: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionState:
    """What the launch rule reads: the loop's settings and a snapshot of its counters."""

    max_staleness: int  # grpo.max_staleness: versions a trained group may lag the learner
    prompts_per_step: int  # n: groups one learner step consumes
    buffer_size: int  # groups in flight + buffered never exceed this
    total_steps: int  # learner steps the run does in total
    steps_started: int
    steps_done: int
    version: int  # the newest published weight version
    in_flight: int  # groups launched and not yet in the buffer (generating, scoring, putting)
    buffered: tuple[tuple[int, int], ...] = ()  # (weight version, groups of that version in the buffer)

    def __post_init__(self) -> None:
        if self.max_staleness < 0 or self.prompts_per_step < 1 or self.buffer_size < 1:
            raise ValueError(f"admission: needs max_staleness >= 0, prompts_per_step >= 1 and buffer_size >= 1, "
                             f"got {self.max_staleness}, {self.prompts_per_step}, {self.buffer_size}")
        if not 0 <= self.steps_done <= self.steps_started:
            raise ValueError(f"admission: steps_done ({self.steps_done}) must be in [0, steps_started "
                             f"({self.steps_started})]")


def too_stale(current_version: int, produced_version: int, bound: int) -> bool:
    """True when work produced by weights `produced_version` lags `current_version` by more than `bound`
    versions (work from a version newer than the current one, which a restart can briefly show, is not stale)."""
    if bound < 0:
        raise ValueError(f"too_stale: the staleness bound must be >= 0, got {bound}")
    return current_version - produced_version > bound


def fresh_groups(state: AdmissionState) -> int:
    """Buffered groups still within the staleness bound of the current version."""
    return sum(count for v, count in state.buffered if not too_stale(state.version, v, state.max_staleness))


def launchable(state: AdmissionState) -> int:
    """How many more prompts may start now (see the module docstring for the three limits)."""
    queued = state.in_flight + fresh_groups(state)
    held = state.in_flight + sum(count for _, count in state.buffered)
    return _limit(state, queued, state.steps_started - state.steps_done, held)


def launchable_after_step(state: AdmissionState) -> int:
    """How many prompts may start chained on the step queued last (`state` taken right as it was queued,
    before its batch is taken): they generate once it has finished, with the weights it published, so
    they are admitted by the state it leaves. That step takes exactly `n` of the queued groups (fresh
    buffered ones, or those of the puts it takes after) or fails, and a failed step fails the prompts
    chained on it (they are issued again); so afterwards one more step is done and `n` fewer groups are
    queued and held. The version is taken as not yet advanced: an advance only makes more buffered groups
    stale, so counting them fresh can only admit fewer. With `max_staleness=0` this admits exactly what
    `launchable` admits once the step has published: the synchronous algorithm's next prompts."""
    if state.steps_started <= state.steps_done:
        return 0
    n = state.prompts_per_step
    queued = state.in_flight + fresh_groups(state) - n
    held = state.in_flight + sum(count for _, count in state.buffered) - n
    if queued < 0:
        raise ValueError(f"admission: a queued step takes {n} groups but only {queued + n} are queued")
    return _limit(state, queued, state.steps_started - state.steps_done - 1, held)


def _limit(state: AdmissionState, queued: int, running: int, held: int) -> int:
    """The tightest of the three limits, given the groups queued for training, the steps running and the
    groups held (in flight + all buffered)."""
    by_staleness = (state.max_staleness - running + 1) * state.prompts_per_step
    by_capacity = state.buffer_size - held
    by_end = (state.total_steps - state.steps_started) * state.prompts_per_step
    return max(0, min(by_staleness - queued, by_capacity, by_end - queued))


@dataclass(frozen=True)
class StalenessBounds:
    """How many versions each role's work may lag its learner: a candidate's generator (G) version, a
    score's reward-model (R) version, a GRPO group's policy (P) version. All zero: the rounds."""

    generator: int = 0
    reward_model: int = 0
    policy: int = 0

    def __post_init__(self) -> None:
        for name in ("generator", "reward_model", "policy"):
            if getattr(self, name) < 0:
                raise ValueError(f"StalenessBounds.{name} must be >= 0, got {getattr(self, name)}")

    def generator_stale(self, current_version: int, produced_version: int) -> bool:
        """A candidate written by G `produced_version` while G's learner is at `current_version`."""
        return too_stale(current_version, produced_version, self.generator)

    def reward_model_stale(self, current_version: int, produced_version: int) -> bool:
        """A score given by R `produced_version` while R's learner is at `current_version`."""
        return too_stale(current_version, produced_version, self.reward_model)

    def policy_stale(self, current_version: int, produced_version: int) -> bool:
        """A GRPO group sampled by P `produced_version` while P's learner is at `current_version`."""
        return too_stale(current_version, produced_version, self.policy)
