"""SIGKILL of the learner's feed mid-GRPO, on real actors: Ray restarts the feed, the controller reads the
step's result again through `LearnerHost.recover`, the generate calls chained on the dead result ref
(`loop.generate_ahead`) fail and their requests are issued again exactly once, and the run finishes its
steps with every group trained exactly once, by id."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.loop.controller import Controller
from medgr2_ray.loop.grpo_flights import Stage
from medgr2_ray.types import GenerationRequest
from tests.loop.test_controller import account
from tests.loop.test_generate_ahead import SYNC, _ids


class KillFeedOnce(Controller):
    """SIGKILLs the learner's feed right after the second step is queued (its generates chained on it)."""

    killed_pid: int | None = None
    chained: tuple[str, ...] = ()  # the requests whose generate calls wait for the killed step's result

    def _maybe_start_step(self, steps: int) -> None:
        before = self.steps_started
        super()._maybe_start_step(steps)
        if self.killed_pid is not None or (before, self.steps_started) != (1, 2):
            return
        step = next(ref for ref, f in self.flights.items() if f.stage is Stage.LEARN)
        self.chained = tuple(sorted(r.request_id for f in self._in_flight() if f.after is step for r in f.requests))
        self.killed_pid = ray.get(self.sys.learner.feed.ready.remote()).pid
        os.kill(self.killed_pid, signal.SIGKILL)


def test_a_sigkilled_feed_mid_grpo_loses_no_group_and_trains_none_twice(
    ray_cluster: None, policy_dir: Path, questions: list[GenerationRequest], loop_config: Any
) -> None:
    cfg = loop_config(*SYNC)
    assert cfg.loop.generate_ahead and cfg.loop.chain_calls  # the defaults: the kill fails a chain
    system = ActorSystem.build(cfg, policy_dir, prefix="t-feedkill-")
    try:
        controller = KillFeedOnce(cfg, system, questions)
        ledger = controller.run(3)
        places = account(controller)  # every issued id in exactly one place: none lost, none twice
        info = ray.get(system.learner.feed.ready.remote())
        assert info.restarted and info.pid != controller.killed_pid  # Ray restarted the feed
        assert system.learner.feed_restarts == 1  # ... and the driver re-submitted what it lost, once
    finally:
        system.shutdown()
    assert controller.chained == tuple(_ids(8, 12, questions))  # the third step's prompts, chained on the second
    assert ledger.reissued == 4  # their generates failed with the feed: issued again, exactly once
    assert ledger.trained_ids == _ids(0, 12, questions)  # the run finished its steps, each group once
    assert places["trained"] == ledger.trained_ids and places["outstanding"] == [] and places["buffered"] == []
    assert ledger.duplicate_ids == [] and ledger.dropped_stale_ids == []
    assert controller.steps_done == 3
    assert ledger.published == sorted(set(ledger.published))  # versions only grow across the restart
