"""The asynchronous loop on real actors: version propagation and the staleness bound, and kill -9 of a
rollout actor mid-run with every request accounted for exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray

from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.cli import main
from medgr2_ray.cli.status_cmd import read_status
from medgr2_ray.loop.controller import Controller
from medgr2_ray.loop.grpo_flights import Flight, Stage
from medgr2_ray.metrics import read_run_log
from medgr2_ray.types import GenerationRequest


def account(controller: Controller) -> dict[str, list[str]]:
    """Where every issued request went; asserts that each went to exactly one place."""
    prompts = controller.prompts
    issued = {f"r{i:08d}:{prompts[i % len(prompts)].request_id}" for i in range(controller.cursor)}
    places = {
        "trained": controller.ledger.trained_ids,
        "dropped_stale": controller.ledger.dropped_stale_ids,
        "buffered": list(ray.get(controller.sys.buffer.queued_ids.remote())),
        "outstanding": controller.outstanding_ids(),
    }
    everywhere = Counter(i for ids in places.values() for i in ids)
    assert [i for i, c in everywhere.items() if c > 1] == []  # nothing trained twice or in two places
    assert set(everywhere) == issued  # nothing lost
    return places


def test_versions_propagate_and_staleness_stays_within_bound(
    ray_cluster: None, policy_dir: Path, questions: list[GenerationRequest], loop_config: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One rollout actor to start; the learner waits for data at once, so the autoscaler adds the second.
    cfg = loop_config("grpo.max_staleness=1", "rollout_pool.min_workers=1", "loop.scale_up_wait_s=0.0",
                      "loop.scale_patience=1")
    system = ActorSystem.build(cfg, policy_dir, prefix="t-prop-")
    try:
        controller = Controller(cfg, system, questions, run_dir=tmp_path)
        ledger = controller.run(5)
        places = account(controller)
        assert len(places["trained"]) == 5 * cfg.grpo.prompts_per_step
        assert ledger.published == list(range(6))  # every step published the next version
        assert ledger.rollout_versions <= set(ledger.published)  # every rollout's version was published
        assert max(ledger.staleness) <= 1 and min(ledger.staleness) >= 0
        assert 1 in ledger.staleness  # the loop really overlapped generation with learning
        members = system.rollout.members
        held = ray.get([m.handle.ready.remote() for m in members])
        assert {h.weight_version for h in held} <= set(ledger.published)
        # the last batch (trained at version 4) was generated at version >= 4 - max_staleness
        assert max(h.weight_version for h in held) >= 4 - cfg.grpo.max_staleness
        records = read_run_log(tmp_path)
        assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[-1]["version"] == 5.0
        assert records[0]["rollout_workers"] == 2  # grown from min_workers=1 while the learner waited
        controller.close()
        # `medgr2 status` reads the same state from the named LoopMonitor actor
        status = read_status("medgr2-tests", prefix="t-prop-")
        assert (status.step, status.version, status.groups_trained) == (5, 5, 10)
        assert main(["status", "--namespace", "medgr2-tests", "--prefix", "t-prop-"]) == 0
        printed = capsys.readouterr().out
        assert "step 5/" in printed and "weight version 5" in printed and "pool t-prop-policy-rollout" in printed
        assert main(["status", "--namespace", "medgr2-tests", "--prefix", "nobody-"]) == 1
    finally:
        system.shutdown()


class KillOnce(Controller):
    """Kills (SIGKILL) the busiest rollout actor's process right after the first generate call returns."""

    killed: tuple[str, int] | None = None

    def _on_done(self, ref: Any, flight: Flight) -> None:
        super()._on_done(ref, flight)
        if self.killed is None and flight.stage is Stage.GENERATE:
            victim = max(self.sys.rollout.members, key=lambda m: m.in_flight)
            assert victim.in_flight > 0
            os.kill(victim.info.pid, signal.SIGKILL)
            self.killed = (victim.name, victim.info.pid)


def test_kill_9_of_a_rollout_actor_loses_and_duplicates_nothing(
    ray_cluster: None, policy_dir: Path, questions: list[GenerationRequest], loop_config: Any
) -> None:
    cfg = loop_config("grpo.max_staleness=1", "rollout_pool.min_workers=2", "rollout_pool.max_restarts=2")
    system = ActorSystem.build(cfg, policy_dir, prefix="t-kill-")
    try:
        controller = KillOnce(cfg, system, questions)
        ledger = controller.run(4)
        places = account(controller)
        assert controller.killed is not None
        assert ledger.reissued >= 1  # the dead actor's calls were issued again ...
        assert len(places["trained"]) == 4 * cfg.grpo.prompts_per_step  # ... and the run finished its steps
        assert ledger.duplicate_ids == []
        name, old_pid = controller.killed
        for _ in range(120):  # the run may finish on the other actor before the restart completes
            try:
                info = ray.get(ray.get_actor(name).ready.remote())
                break
            except ray.exceptions.ActorUnavailableError:
                time.sleep(1.0)
        assert info.restarted and info.pid != old_pid  # Ray restarted it in a new process
    finally:
        system.shutdown()
