"""A GRPO run keeps one published weight version in the object store, not one per step, on real actors.

A process that holds a `WeightVersion` holds its object ref, and the store frees a version only once no
process does. The learner's feed kept every step's report, weights included, so a run kept every version
it ever published (measured before the fix: one more object and one more copy of the weights per step;
for a 3B model's full weights, gigabytes per step). Now a report drops its weights once a newer version
exists, and the controller's step timings hold none. The synchronous and the asynchronous loop both run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.loop.controller import Controller
from medgr2_ray.sync.weights import object_store_bytes_used
from medgr2_ray.types import GenerationRequest

STEPS = 6


@pytest.mark.parametrize("staleness", [0, 1])
def test_a_grpo_run_keeps_only_the_newest_weights_in_the_object_store(
    ray_cluster: None, policy_dir: Path, questions: list[GenerationRequest], loop_config: Any, staleness: int
) -> None:
    cfg = loop_config(f"grpo.max_staleness={staleness}", "grpo.dynamic_sampling=false", "rollout_pool.max_workers=1")
    system = ActorSystem.build(cfg, policy_dir, prefix=f"t-wfree{staleness}-")
    try:
        controller = Controller(cfg, system, questions)
        baseline = object_store_bytes_used()  # version 0 is in the store (published at start)
        version_bytes = controller.weights.num_bytes
        controller.run(STEPS)
        assert len(controller.ledger.published) == STEPS + 1  # versions 0..6, each published once
        # One version over the baseline (where version 0 was both the newest and the served one): the newest,
        # and the one the rollout actor still serves until its next call; plus small objects (batches).
        # Freeing is asynchronous: wait for it.
        deadline = time.monotonic() + 30
        while object_store_bytes_used() - baseline > 1.5 * version_bytes and time.monotonic() < deadline:
            time.sleep(0.5)
        held = (object_store_bytes_used() - baseline) / version_bytes
        assert held < 1.5, f"the store holds {held:.1f} versions more than at the start after {STEPS} steps"
    finally:
        system.shutdown()
