"""The loop's numbers: synchronous mode reproduces a hand-written synchronous GRPO loop exactly, a run
resumed from a checkpoint matches an uninterrupted one step for step, and asynchronous GRPO on real
actors raises the reward (logged to the run directory's metrics)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medgr2_ray.actors.scorer import group_rollouts
from medgr2_ray.actors.system import ActorSystem
from medgr2_ray.algo.rewards import accuracy_reward
from medgr2_ray.config import Config
from medgr2_ray.loop.controller import Controller
from medgr2_ray.metrics import read_run_log
from medgr2_ray.types import GenerationRequest, SamplingParams, ScoredGroup

SYNC = ("grpo.max_staleness=0", "grpo.prompts_per_step=4", "loop.requests_per_call=4",
        "rollout_pool.max_workers=1", "learner.lr=1e-3")


@dataclass
class RunResult:
    weights: dict[str, np.ndarray]
    rewards: list[float]
    trained_ids: list[str]


def run_loop(cfg: Config, model_dir: Path, prompts: list[GenerationRequest], steps: int, prefix: str,
             run_dir: Path | None = None, resume_from: Path | None = None) -> RunResult:
    """Build a fresh actor system, (resume and) run the controller to `steps`, and tear it down."""
    system = ActorSystem.build(cfg, model_dir, prefix=prefix)
    try:
        controller = Controller(cfg, system, prompts, run_dir=run_dir)
        if resume_from is not None:
            controller.resume(resume_from)
        ledger = controller.run(steps)
        controller.close()
        return RunResult(system.learner.weights_numpy(), list(ledger.rewards), list(ledger.trained_ids))
    finally:
        system.shutdown()


def hand_written_sync_grpo(cfg: Config, model_dir: Path, prompts: list[GenerationRequest], steps: int) -> RunResult:
    """The synchronous algorithm without Ray: generate, score by accuracy, one GRPO step, load weights."""
    from medgr2_ray.engines.hf import HFEngine
    from medgr2_ray.learner.policy import PolicyLearner

    learner = PolicyLearner(model_dir, cfg.policy, cfg.learner, cfg.grpo, cfg.run.seed)
    engine = HFEngine(model_dir, cfg.policy, cfg.engine, seed=0)
    sampling = SamplingParams(n=cfg.grpo.group_size, temperature=cfg.grpo.temperature,
                              max_new_tokens=cfg.grpo.max_new_tokens)
    n, cursor, rewards, trained = cfg.grpo.prompts_per_step, 0, [], []
    for _ in range(steps):
        batch = [replace(prompts[(cursor + i) % len(prompts)], request_id=f"r{cursor + i:08d}:{prompts[(cursor + i) % len(prompts)].request_id}")
                 for i in range(n)]
        cursor += n
        seed = zlib.crc32(f"{cfg.run.seed}:{batch[0].request_id}".encode())
        rollouts = engine.generate(batch, replace(sampling, seed=seed))
        groups = [
            ScoredGroup(req.request_id, req, rs,
                        np.asarray(accuracy_reward([req.sample] * len(rs), [r.text for r in rs]), np.float32))
            for req, rs in zip(batch, group_rollouts(batch, rollouts))
        ]
        rewards.append(learner.grpo_step(groups)["reward_mean"])
        trained.extend(g.group_id for g in groups)
        engine.load_weights(learner.export_weights(), learner.version)
    weights = {k: v.detach().numpy() for k, v in learner.trainable_parameters().items()}
    return RunResult(weights, rewards, trained)


def assert_same(a: RunResult, b: RunResult) -> None:
    assert a.trained_ids == b.trained_ids
    assert a.rewards == b.rewards
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster: None, format_tuned_dir: Path, questions: list[GenerationRequest],
                  ) -> RunResult:
    """Four synchronous steps straight through (the reference for the two tests below)."""
    from medgr2_ray.config import load_config

    cfg = load_config(None, [*BASE, *SYNC])
    return run_loop(cfg, format_tuned_dir, questions, 4, "t-sync-a-")


# The same settings as the `loop_config` fixture (which a module-scoped fixture cannot use).
BASE = (
    "grpo.group_size=4", "grpo.max_new_tokens=2", "grpo.temperature=1.0", "grpo.dynamic_sampling=false",
    "reward.alpha=0.0", "reward.beta=1.0", "learner.micro_batch_size=16", "loop.poll_s=0.2",
)


def test_sync_mode_is_exactly_the_synchronous_algorithm(
    uninterrupted: RunResult, format_tuned_dir: Path, questions: list[GenerationRequest], loop_config: Any
) -> None:
    cfg = loop_config(*SYNC)
    reference = hand_written_sync_grpo(cfg, format_tuned_dir, questions, 4)
    assert len(set(reference.rewards)) > 1  # the rewards vary, so the weights really moved
    assert_same(uninterrupted, reference)


def test_sync_mode_with_every_call_through_the_controller_is_the_same(
    uninterrupted: RunResult, format_tuned_dir: Path, questions: list[GenerationRequest], loop_config: Any
) -> None:
    """Chaining calls and queueing the learner's step ahead change when calls are submitted, not what runs."""
    cfg = loop_config(*SYNC, "loop.chain_calls=false", "loop.take_ahead=false")
    assert_same(run_loop(cfg, format_tuned_dir, questions, 4, "t-sync-d-"), uninterrupted)


def test_resumed_run_matches_uninterrupted_run(
    uninterrupted: RunResult, format_tuned_dir: Path, questions: list[GenerationRequest], loop_config: Any,
    tmp_path: Path,
) -> None:
    cfg = loop_config(*SYNC, "loop.checkpoint_every=2")
    first = run_loop(cfg, format_tuned_dir, questions, 2, "t-sync-b-", run_dir=tmp_path)
    assert first.rewards == uninterrupted.rewards[:2]
    checkpoint = tmp_path / "checkpoints" / "step_000002"
    assert (checkpoint / "learner" / "model.safetensors").is_file()
    resumed = run_loop(cfg, format_tuned_dir, questions, 4, "t-sync-c-", run_dir=tmp_path, resume_from=checkpoint)
    assert_same(resumed, uninterrupted)
    assert [r["step"] for r in read_run_log(tmp_path)] == [1, 2, 3, 4]


def test_async_grpo_raises_reward(
    ray_cluster: None, format_tuned_dir: Path, questions: list[GenerationRequest], loop_config: Any, tmp_path: Path
) -> None:
    cfg = loop_config(
        "grpo.max_staleness=1", "grpo.prompts_per_step=8", "grpo.group_size=8", "loop.requests_per_call=4",
        "rollout_pool.min_workers=2", "learner.lr=1e-3",
    )
    system = ActorSystem.build(cfg, format_tuned_dir, prefix="t-learn-")
    try:
        controller = Controller(cfg, system, questions, run_dir=tmp_path)
        ledger = controller.run(20)
        controller.close()
    finally:
        system.shutdown()
    assert max(ledger.staleness) <= 1 and 1 in ledger.staleness  # it really ran asynchronously
    logged = [r["reward_mean"] for r in read_run_log(tmp_path)]
    print("async GRPO reward per step:", [round(r, 3) for r in logged])
    assert logged == ledger.rewards  # the run directory holds what the learner reported
    start, end = float(np.mean(logged[:3])), float(np.mean(logged[-5:]))
    assert start < 0.35  # chance level after format-only SFT
    assert end > start + 0.15, logged
