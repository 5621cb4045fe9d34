"""Chaos: one actor of every kind is SIGKILLed at a seeded random moment of a short but whole cycle (the
continuous flywheel, solver SFT, GRPO), on real Ray with real tiny models and the real seed pool.

Killed once each: a generator, a scorer, the kept-sample store, the worker of each of the three
learners (G, R, P) and G's learner feed during the data phase; a policy rollout actor and the rollout buffer during GRPO. The
run must finish, and the ledgers must prove by id that nothing was lost or counted twice: every
generation request answered by the store exactly once and its candidates decided once, every GRPO
request trained, dropped as stale, refused as uniform, buffered or in flight — exactly one of them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray

from medgr2_ray.config import load_config
from medgr2_ray.data.store import read_samples
from medgr2_ray.loop.cycle import CycleResult, run_cycle
from medgr2_ray.messages import FlywheelStatus

pytestmark = pytest.mark.slow
PREFIX = "chaos-"
DATA_KINDS = ("generator-rollout-0", "scorer-0", "KeptStore", "GeneratorLearner", "RewardLearner", "PolicyLearner",
              "GeneratorLearnerFeed")
GRPO_KINDS = ("policy-rollout-0", "RolloutBuffer")


def _pid(name: str) -> int:
    """The process of a named actor, or of a learner's rank-0 train worker (named by its feed)."""
    if name.endswith("Learner"):
        for _ in range(600):  # 0 while a group restarts after its feed did (and os.kill(0) is our own group)
            pid = int(ray.get(ray.get_actor(f"{PREFIX}{name}Feed").worker_pid.remote(), timeout=30))
            if pid > 0:
                return pid
            time.sleep(0.5)
        raise TimeoutError(f"{name}: no worker announced itself")
    return int(ray.get(ray.get_actor(f"{PREFIX}{name}").ready.remote(), timeout=60).pid)


class Chaos(threading.Thread):
    """Kills each kind once, in a seeded order, a seeded few seconds apart, once its phase has begun."""

    def __init__(self, seed: int) -> None:
        super().__init__(daemon=True)
        rng = random.Random(seed)
        self.plan = [(k, rng.uniform(1.0, 4.0)) for k in rng.sample(DATA_KINDS, len(DATA_KINDS))]
        self.plan += [(k, rng.uniform(0.2, 1.0)) for k in rng.sample(GRPO_KINDS, len(GRPO_KINDS))]
        self.killed: list[str] = []
        self.errors: list[str] = []

    def _phase(self) -> str:
        """The run's phase; "data" only once candidates flow (the kills must hit work in flight)."""
        from medgr2_ray.cli.status_cmd import read_status

        status = read_status("medgr2-tests", PREFIX, timeout_s=10)
        if status is None:
            return ""
        if not isinstance(status, FlywheelStatus):
            return "grpo"
        flowing = status.data is not None and status.data.requests_in_flight > 0
        return status.phase if status.phase != "data" or flowing else "bootstrap"

    def _wait_for(self, phases: tuple[str, ...], timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while self._phase() not in phases:
            if time.monotonic() > deadline:
                raise TimeoutError(f"phase {phases} never came")
            time.sleep(0.5)

    def run(self) -> None:
        try:
            for name, delay in self.plan:
                self._wait_for(("grpo",) if name in GRPO_KINDS else ("data",))
                time.sleep(delay)
                os.kill(_pid(name), signal.SIGKILL)
                self.killed.append(name)
        except Exception as exc:  # reported by the test, which must not hang on a broken killer
            self.errors.append(f"{type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def chaos_run(ray_cluster: None, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = load_config(None, [
        f"run.root={tmp_path_factory.mktemp('chaos')}", "run.name=chaos", f"data.cache_dir={tiny_cache}",
        "ray.namespace=medgr2-tests", "cycle.tasks=[Modality Recognition]", "cycle.strategies=[direct]",
        "cycle.samples_per_prompt=2", "cycle.max_new_tokens=120", "cycle.generator_bootstrap_steps=150",
        "cycle.temperature=0.3",
        "cycle.rm_answer_steps=4", "cycle.rm_bootstrap_steps=4", "cycle.publish_every=3",
        "solver.sft_steps=200", "solver.eval_per_modality=2", "grpo.steps=40", "grpo.prompts_per_step=2",
        "grpo.group_size=4", "grpo.max_new_tokens=4", "learner.checkpoint_every=4",
        "learner.num_cpus_per_rank=0.5", "generator_pool.num_cpus=0.5", "scorer_pool.num_cpus=0.5",
        "rollout_pool.num_cpus=0.5", "loop.requests_per_call=2", "loop.poll_s=0.1"])
    chaos = Chaos(seed=7)
    chaos.start()
    result = run_cycle(cfg, lambda *_: None, prefix=PREFIX)
    chaos.join(timeout=60)
    return {"result": result, "chaos": chaos}


def test_every_actor_kind_was_killed_once_and_the_run_finished(chaos_run: dict[str, Any]) -> None:
    chaos: Chaos = chaos_run["chaos"]
    assert not chaos.errors, chaos.errors
    assert sorted(chaos.killed) == sorted(DATA_KINDS + GRPO_KINDS)
    result: CycleResult = chaos_run["result"]
    assert {"untrained", "after_sft", "after_grpo"} <= set(result.evals)


def test_no_generation_request_or_candidate_was_lost_or_doubled(chaos_run: dict[str, Any]) -> None:
    result: CycleResult = chaos_run["result"]
    ledger = result.data_ledger
    closed = Counter(ledger.answered + ledger.refused)
    assert set(closed) == set(ledger.issued) and max(closed.values()) == 1, "a request answered twice or never"
    samples = read_samples(result.run_dir / "data" / "stream" / "samples.jsonl")
    ids = [s.sample_id for s in samples]
    assert len(ids) == len(set(ids)), "a candidate was decided twice"
    offers = [json.loads(line) for line in (result.run_dir / "data" / "stream" / "offers.jsonl").read_text().splitlines()]
    offered = Counter(r for offer in offers for r in offer["request_ids"])
    assert max(offered.values()) == 1, "the store logged a request twice"
    assert set(offered) == set(ledger.issued)


def test_no_grpo_group_was_lost_or_trained_twice(chaos_run: dict[str, Any]) -> None:
    accounting = chaos_run["result"].grpo
    assert accounting is not None and accounting.trained
    assert accounting.problems() == []
    assert accounting.reissued + chaos_run["result"].data_ledger.reissued > 0  # the kills hit work in flight
