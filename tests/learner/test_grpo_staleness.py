"""GRPO on one-version-stale groups with a real tiny VLM: decoupled PPO learns, behaviour clipping stalls.

The asynchronous loop trains almost every group one weight version after the engine sampled it. Here
the same happens without Ray or an engine, deterministically: four questions, each with a group of
its four option letters as completions (reward 1 for the right letter), whose behaviour log-probs are
the learner's own scores at the *previous* version (what an engine one version behind reports; at
staleness 0 they are the current version's). The measure is the expected reward of the policy over
the options: the right letter's probability share among the four completions (0.25 at chance).

At a high learning rate a step moves the right letter's probability well beyond 1 + clip_high, so on
the next (stale) batch the behaviour-clipped ratio already sits in the clipped region before the step
has done anything, and those tokens get no gradient; the decoupled objective clips against the
proximal policy (the current weights) and keeps learning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medgr2_ray.config import GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.types import GenerationRequest, Rollout, ScoredGroup

LETTERS = "ABCD"
QUESTIONS = tuple(GenerationRequest(f"q{i}", f"Question {i}: pick the right option, A, B, C or D.") for i in range(4))
ANSWERS = (0, 1, 2, 3)  # question i's right letter: every letter is right for one question


@dataclass(frozen=True)
class Trace:
    """Expected reward after each step (index 0: before training) and each step's grpo metrics."""

    reward: list[float]
    metrics: list[dict[str, float]]


def _expected_reward(scores: list[np.ndarray]) -> float:
    """Mean over questions of the right letter's probability share among the four completions."""
    totals = np.array([[scores[k * 4 + j].sum() for j in range(4)] for k in range(len(QUESTIONS))], np.float64)
    shares = np.exp(totals - totals.max(axis=1, keepdims=True))
    shares /= shares.sum(axis=1, keepdims=True)
    return float(np.mean([shares[k, a] for k, a in enumerate(ANSWERS)]))


def _groups(behaviour: list[np.ndarray], completions: list[tuple[int, ...]], version: int) -> list[ScoredGroup]:
    """One group per question: every letter once, with the behaviour log-probs of weight `version`."""
    groups = []
    for k, question in enumerate(QUESTIONS):
        rollouts = tuple(
            Rollout(question.request_id, j, (), completions[j], LETTERS[j], behaviour[k * 4 + j].astype(np.float32), "stop", version)
            for j in range(4)
        )
        rewards = np.array([1.0 if j == ANSWERS[k] else 0.0 for j in range(4)], np.float32)
        groups.append(ScoredGroup(question.request_id, question, rollouts, rewards))
    return groups


def _train(model_dir: Path, proximal_clip: bool, staleness: int, steps: int, lr: float) -> Trace:
    """`steps` GRPO steps whose groups carry behaviour log-probs `staleness` versions old."""
    grpo = GRPOConfig(proximal_clip=proximal_clip, group_size=4, loss_agg="token_mean")
    learner = PolicyLearner(model_dir, ModelConfig(), LearnerConfig(lr=lr, micro_batch_size=16), grpo, seed=0)
    completions = [learner.target_token_ids(letter) for letter in LETTERS]
    requests = [q for q in QUESTIONS for _ in LETTERS]
    rows = [c for _ in QUESTIONS for c in completions]
    history = [learner.score_completions(requests, rows)]  # history[v]: the scores of weight version v
    metrics = []
    for _ in range(steps):
        version = max(0, len(history) - 1 - staleness)
        metrics.append(learner.grpo_step(_groups(history[version], completions, version)))
        history.append(learner.score_completions(requests, rows))
    return Trace([_expected_reward(s) for s in history], metrics)


def test_decoupled_ppo_learns_from_one_version_stale_groups_where_behaviour_clipping_stalls(tiny_dir: Path) -> None:
    decoupled = _train(tiny_dir, proximal_clip=True, staleness=1, steps=10, lr=1e-2)
    clipped = _train(tiny_dir, proximal_clip=False, staleness=1, steps=10, lr=1e-2)
    print(f"expected reward, decoupled: {np.round(decoupled.reward, 3).tolist()}")
    print(f"expected reward, behaviour-clipped: {np.round(clipped.reward, 3).tolist()}")
    assert decoupled.reward[0] == pytest.approx(clipped.reward[0]) and decoupled.reward[0] < 0.3  # chance
    assert decoupled.reward[-1] > 0.6, decoupled.reward
    assert decoupled.reward[-1] > clipped.reward[-1] + 0.25, (decoupled.reward, clipped.reward)
    # The mechanism: stale ratios land in the behaviour clip; the proximal ratio of one step never does.
    assert np.mean([m["clip_frac"] for m in clipped.metrics[1:]]) > 0.1
    assert all(m["clip_frac"] == 0.0 for m in decoupled.metrics)
    assert max(m["behaviour_ratio_max"] for m in decoupled.metrics[1:]) > 1.0 + GRPOConfig().clip_high


def test_objectives_coincide_when_synchronous(tiny_dir: Path) -> None:
    """max_staleness=0: behaviour == proximal (same learner numerics), so both runs are the same run."""
    decoupled = _train(tiny_dir, proximal_clip=True, staleness=0, steps=6, lr=1e-2)
    clipped = _train(tiny_dir, proximal_clip=False, staleness=0, steps=6, lr=1e-2)
    print(f"expected reward, synchronous: {np.round(decoupled.reward, 3).tolist()}")
    np.testing.assert_allclose(decoupled.reward, clipped.reward, rtol=1e-5)
    np.testing.assert_allclose([m["loss"] for m in decoupled.metrics], [m["loss"] for m in clipped.metrics], rtol=1e-4)
    assert decoupled.reward[-1] > decoupled.reward[0] + 0.1  # and it does learn
    assert all(m["behaviour_weight_max"] == pytest.approx(1.0) for m in decoupled.metrics)
