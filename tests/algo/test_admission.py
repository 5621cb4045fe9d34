"""Admission arithmetic by hand: the staleness bound, capacity, end of run, max_staleness=0 as the
synchronous algorithm; the controller's former inline formula as an independent reference; and the
per-role staleness predicate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medgr2_ray.algo.admission import (AdmissionState, StalenessBounds, fresh_groups, launchable, launchable_after_step,
                                       too_stale)


def _state(**changes: object) -> AdmissionState:
    base: dict[str, object] = {"max_staleness": 1, "prompts_per_step": 4, "buffer_size": 64, "total_steps": 10,
                               "steps_started": 0, "steps_done": 0, "version": 0, "in_flight": 0, "buffered": ()}
    return AdmissionState(**(base | changes))  # type: ignore[arg-type]


def test_at_the_start_the_staleness_bound_allows_max_staleness_plus_one_steps() -> None:
    # (1 - 0 running + 1) * 4 = 8; capacity 64; end 10 * 4 = 40
    assert launchable(_state()) == 8
    assert launchable(_state(max_staleness=3)) == 16


def test_groups_in_flight_and_fresh_buffered_groups_use_up_the_staleness_budget() -> None:
    # queued = 5 in flight + 2 buffered = 7 -> 8 - 7 = 1
    assert launchable(_state(in_flight=5, buffered=((0, 2),))) == 1
    # one step running: (1 - 1 + 1) * 4 = 4, queued 3 -> 1
    assert launchable(_state(steps_started=1, in_flight=3)) == 1


def test_stale_buffered_groups_do_not_count_as_queued_but_do_take_capacity() -> None:
    # version 3, bound 1: the 4 groups of version 1 lag by 2 (stale), the 2 of version 3 are fresh.
    state = _state(version=3, buffered=((1, 4), (3, 2)))
    assert fresh_groups(state) == 2
    assert launchable(state) == 8 - 2
    # capacity counts all 6: 10 - 1 in flight - 6 = 3 is now the tightest limit
    assert launchable(_state(version=3, buffered=((1, 4), (3, 2)), buffer_size=10, in_flight=1)) == 3


def test_capacity_limits_groups_in_flight_plus_buffered() -> None:
    # staleness (5 + 1) * 4 - (3 + 5) = 16; capacity 10 - 3 - 5 = 2
    assert launchable(_state(max_staleness=5, buffer_size=10, in_flight=3, buffered=((0, 5),))) == 2
    assert launchable(_state(max_staleness=5, buffer_size=8, in_flight=3, buffered=((0, 5),))) == 0


def test_the_end_of_the_run_launches_no_prompt_that_no_step_will_train() -> None:
    # 3 steps in total, 2 started and done: one step left, 4 prompts; 1 already in flight -> 3
    assert launchable(_state(max_staleness=5, total_steps=3, steps_started=2, steps_done=2)) == 4
    assert launchable(_state(max_staleness=5, total_steps=3, steps_started=2, steps_done=2, in_flight=1)) == 3
    assert launchable(_state(max_staleness=5, total_steps=3, steps_started=3, steps_done=2)) == 0


def test_max_staleness_zero_is_one_steps_prompts_after_the_previous_step_published() -> None:
    sync = {"max_staleness": 0}
    assert launchable(_state(**sync)) == 4  # exactly one step's prompts
    assert launchable(_state(**sync, in_flight=4)) == 0  # ... and no more until they are trained
    assert launchable(_state(**sync, steps_started=1, steps_done=0)) == 0  # a step running: wait for it
    assert launchable(_state(**sync, steps_started=1, steps_done=1, version=1)) == 4  # it published
    # groups of the previous version left in the buffer are stale at bound 0: capacity only
    assert launchable(_state(**sync, steps_started=1, steps_done=1, version=1, buffered=((0, 2),))) == 4


def test_prompts_chained_on_a_queued_step_are_those_its_end_admits() -> None:
    sync = {"max_staleness": 0}
    # Staleness 0, step 1 just queued on the 4 groups of version 0 in the buffer: chained on it, the next
    # step's 4 prompts, as `launchable` admits once the step has published version 1 and taken the groups.
    queued_on_buffer = _state(**sync, steps_started=1, buffered=((0, 4),))
    assert launchable(queued_on_buffer) == 0
    assert launchable_after_step(queued_on_buffer) == 4 == launchable(_state(**sync, steps_started=1, steps_done=1, version=1))
    # ... the same when it was queued ahead on the 4 puts in flight that bring its groups
    assert launchable_after_step(_state(**sync, steps_started=1, in_flight=4)) == 4
    # those 4 launched: nothing more until that step is done
    assert launchable_after_step(_state(**sync, steps_started=1, in_flight=8)) == 0
    # bound 1, step 3 queued on 4 of 6 fresh groups: afterwards 2 queued, one step's room more -> 8 - 2
    assert launchable_after_step(_state(steps_started=3, steps_done=2, version=2, buffered=((1, 2), (2, 4)))) == 6
    # capacity: the 4 groups the step takes free their room (6 - 6 + 4, below the bound's 8 - 2); the end:
    # 3 steps, all started -> 0
    assert launchable_after_step(_state(steps_started=3, steps_done=2, version=2, buffered=((2, 6),), buffer_size=6)) == 4
    assert launchable_after_step(_state(total_steps=3, steps_started=3, steps_done=2, buffered=((0, 4),))) == 0
    # no step running: nothing to chain on; fewer groups queued than a step takes: refused
    assert launchable_after_step(_state(**sync)) == 0
    with pytest.raises(ValueError, match="takes 4 groups"):
        launchable_after_step(_state(**sync, steps_started=1, in_flight=3))


def test_launchable_is_never_negative() -> None:
    assert launchable(_state(in_flight=30)) == 0
    assert launchable(_state(steps_started=5, steps_done=1)) == 0  # more steps running than the bound allows


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="max_staleness >= 0"):
        _state(max_staleness=-1)
    with pytest.raises(ValueError, match="steps_done"):
        _state(steps_started=1, steps_done=2)


def _controller_formula(max_staleness: int, n: int, buffer_size: int, steps: int, started: int, done: int,
                        version: int, in_flight: int, buffered: dict[int, int]) -> int:
    """loop/controller.py's `_launchable` as it was written inline before issue 15 (the reference)."""
    fresh = sum(c for v, c in buffered.items() if version - v <= max_staleness)
    queued = in_flight + fresh
    by_staleness = (max_staleness - (started - done) + 1) * n
    by_capacity = buffer_size - in_flight - sum(buffered.values())
    by_end = (steps - started) * n
    return max(0, min(by_staleness - queued, by_capacity, by_end - queued))


@settings(max_examples=300, deadline=None)
@given(max_staleness=st.integers(0, 4), n=st.integers(1, 8), buffer_size=st.integers(1, 80), steps=st.integers(0, 12),
       started=st.integers(0, 12), running=st.integers(0, 3), version=st.integers(0, 12), in_flight=st.integers(0, 40),
       buffered=st.dictionaries(st.integers(0, 12), st.integers(0, 20), max_size=5))
def test_same_as_the_controllers_former_inline_formula(max_staleness: int, n: int, buffer_size: int, steps: int,
                                                       started: int, running: int, version: int, in_flight: int,
                                                       buffered: dict[int, int]) -> None:
    done = max(0, started - running)
    state = AdmissionState(max_staleness, n, buffer_size, steps, started, done, version, in_flight,
                           tuple(sorted(buffered.items())))
    assert launchable(state) == _controller_formula(max_staleness, n, buffer_size, steps, started, done, version,
                                                    in_flight, buffered)


def test_too_stale() -> None:
    assert not too_stale(5, 4, 1) and too_stale(5, 3, 1)
    assert not too_stale(5, 5, 0) and too_stale(5, 4, 0)
    assert not too_stale(3, 5, 0)  # newer than current (seen briefly around a restart): not stale
    with pytest.raises(ValueError, match=">= 0"):
        too_stale(1, 1, -1)


def test_staleness_bounds_per_role() -> None:
    bounds = StalenessBounds(generator=2, reward_model=1, policy=0)
    # the same lag of one version: within G's and R's bounds, beyond P's
    assert not bounds.generator_stale(7, 6) and not bounds.reward_model_stale(7, 6) and bounds.policy_stale(7, 6)
    assert not bounds.generator_stale(7, 5) and bounds.reward_model_stale(7, 5) and bounds.generator_stale(7, 4)
    rounds = StalenessBounds()
    assert (rounds.generator, rounds.reward_model, rounds.policy) == (0, 0, 0)
    with pytest.raises(ValueError, match="StalenessBounds.reward_model must be >= 0"):
        StalenessBounds(reward_model=-1)
