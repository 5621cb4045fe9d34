"""`loop.generate_ahead` on real actors: the next step's generate calls go out while the step before still
runs, chained on its result, and generate with the weights it published (staleness 0 stays synchronous:
every group trained at the version that generated it); a step that trains nothing fails the generates
chained on it, and their requests are issued again exactly once. (That staleness 0 with it on is the
synchronous algorithm bit for bit: tests/loop/test_loop_learning.py, which runs the default config.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.loop.controller import Controller
from medgr2_ray.types import GenerationRequest

SYNC = ("grpo.max_staleness=0", "grpo.prompts_per_step=4", "loop.requests_per_call=4", "rollout_pool.max_workers=1",
        "grpo.dynamic_sampling=false")


def _ids(first: int, last: int, prompts: list[GenerationRequest]) -> list[str]:
    return [f"r{i:08d}:{prompts[i % len(prompts)].request_id}" for i in range(first, last)]


def test_next_generate_is_chained_on_the_step_and_uses_its_new_weights(
    ray_cluster: None, policy_dir: Path, questions: list[GenerationRequest], loop_config: Any
) -> None:
    cfg = loop_config(*SYNC)
    assert cfg.loop.generate_ahead  # the default
    system = ActorSystem.build(cfg, policy_dir, prefix="t-gahead-")
    try:
        controller = Controller(cfg, system, questions)
        ledger = controller.run(3)
        gens = sorted((c for c in controller.calls if c.stage == "generate"), key=lambda c: c.submitted)
        learns = sorted((c for c in controller.calls if c.stage == "learn"), key=lambda c: c.submitted)
        assert len(gens) == 3 and len(learns) == 3  # one call of 4 prompts per step (the end admits no 4th)
        for gen, learn in zip(gens[1:], learns):
            # out before the controller saw the step before finish, yet it ran after it (its rollouts
            # are of the version that step published: staleness 0 below)
            assert learn.submitted <= gen.submitted < learn.observed
        assert ledger.published == [0, 1, 2, 3]
        assert ledger.staleness == [0] * 12  # every group trained at the version that generated it
        assert ledger.rollout_versions == {0, 1, 2}
        assert ledger.trained_ids == _ids(0, 12, questions) and ledger.reissued == 0
    finally:
        system.shutdown()


def test_a_step_that_trains_nothing_reissues_the_generates_chained_on_it_once(
    ray_cluster: None, policy_dir: Path, questions: list[GenerationRequest], loop_config: Any
) -> None:
    system = ActorSystem.build(loop_config(*SYNC), policy_dir, prefix="t-gfail-")
    try:
        # A first controller trains prompts 0-3 (nothing ahead); a second one starts its cursor at 0 again on
        # the same buffer, which refuses those ids as duplicates: its first step, queued ahead on their puts,
        # comes up short and trains nothing, so the generate of prompts 4-7 chained on it fails.
        first = Controller(loop_config(*SYNC, "loop.generate_ahead=false"), system, questions)
        assert first.run(1).trained_ids == _ids(0, 4, questions)
        second = Controller(loop_config(*SYNC), system, questions)
        ledger = second.run(2)
        assert sorted(ledger.duplicate_ids) == sorted(_ids(0, 4, questions))
        assert ledger.reissued == 4  # prompts 4-7, once
        assert ledger.trained_ids == _ids(4, 12, questions)  # each exactly once, none lost
        assert ledger.staleness == [0] * 8
        assert second.outstanding_ids() == []
    finally:
        system.shutdown()
