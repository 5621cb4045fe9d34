"""ScorerActor with a real (tiny) reward model, scalar or verifier: MedGR²'s combined reward computed
exactly, bad inputs give NaN rewards instead of failing the batch, and published reward-model weights
replace the scorer's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.actors.scorer import ScorerActor, ScorerSpec, reward_model_request
from medgr2_ray.algo.rewards import normalize_rm_score
from medgr2_ray.config import LearnerConfig, ModelConfig, RewardConfig
from medgr2_ray.learner.reward import RewardLearner
from medgr2_ray.models.reward_head import RewardModel, VerifierInit
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.sync.weights import fetch_weights, publish_weights
from medgr2_ray.types import GenerationRequest, Modality, Rollout, Sample, TaskType

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_model_dir(ModelConfig(), tmp_path_factory.mktemp("scorer-cache"), seed=0, role="reward")


@pytest.fixture(scope="module")
def verifier_dir(reward_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved verifier R (scalar head + verdict weight), as the rounds hand it to the GRPO scorers."""
    out = tmp_path_factory.mktemp("verifier") / "rm"
    RewardModel.from_backbone(reward_dir, seed=0, verifier=VerifierInit(-6.0, 10.0)).save_pretrained(out)
    return out


def _request(rid: str, with_sample: bool = True) -> GenerationRequest:
    image = np.random.default_rng(0).integers(0, 255, size=(56, 56, 3), dtype=np.uint8)
    sample = Sample("s", "img", "", "Which modality?", ("CT", "MR"), "CT", TaskType.MODALITY, Modality.CT)
    return GenerationRequest(rid, "Which modality? A. CT B. MR", (image,), sample=sample if with_sample else None)


def _rollouts(rid: str, texts: list[str]) -> list[Rollout]:
    return [Rollout(rid, i, (1,), (2,), t, np.zeros(1, np.float32), "stop", 0) for i, t in enumerate(texts)]


@pytest.mark.parametrize("kind", ["scalar", "verifier"])
def test_combined_reward_is_alpha_norm_r_plus_beta_accuracy(kind: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue("reward_dir" if kind == "scalar" else "verifier_dir")
    cfg = RewardConfig()  # alpha 0.8, beta 0.2
    scorer = ScorerActor(ScorerSpec(str(model_dir), ModelConfig(), cfg, micro_batch_size=4, seed=0))
    question, texts = _request("q1"), ["A", "B", "CT", "no idea"]
    rollouts = _rollouts("q1", texts)
    (group,) = scorer.score([question], rollouts)
    # An independent reward model (same directory and seed) scores what R should have read.
    reference = RewardLearner(model_dir, ModelConfig(), LearnerConfig(micro_batch_size=4), seed=0)
    assert reference.reward_model.is_verifier == (kind == "verifier")
    r = reference.score([reward_model_request(question, x) for x in rollouts])
    if kind == "verifier":  # "A" and "CT" both answer CT: R weighs the same answer, so the same score
        assert r[0] == pytest.approx(r[2], abs=1e-5) and r[0] != pytest.approx(r[1], abs=1e-5)
    accuracy = [1.0, 0.0, 1.0, 0.0]
    expected = [cfg.alpha * normalize_rm_score(s, cfg) + cfg.beta * a for s, a in zip(r, accuracy)]
    np.testing.assert_allclose(group.rewards, np.asarray(expected, np.float32), rtol=1e-6)
    assert group.group_id == "q1" and [x.index for x in group.rollouts] == [0, 1, 2, 3]
    assert np.isfinite(group.rewards).all()  # "no idea" is no option: R weighs it as free text


def test_a_users_rule_replaces_accuracy_in_the_reward() -> None:
    cfg = RewardConfig(alpha=0.0, beta=0.5, rule="tests.algo.test_rewards:share_of_a")
    scorer = ScorerActor(ScorerSpec(None, ModelConfig(), cfg, micro_batch_size=4, seed=0))  # no R: alpha is 0
    (group,) = scorer.score([_request("q1")], _rollouts("q1", ["AAAB", "CT", "A"]))
    np.testing.assert_allclose(group.rewards, np.asarray([0.5 * 0.75, 0.0, 0.5], np.float32))


def test_a_request_without_an_answer_gets_nan_not_an_exception(reward_dir: Path) -> None:
    scorer = ScorerActor(ScorerSpec(str(reward_dir), ModelConfig(), RewardConfig(), micro_batch_size=4, seed=0))
    good, bad = _request("good"), _request("bad", with_sample=False)
    groups = scorer.score([good, bad], _rollouts("good", ["A"]) + _rollouts("bad", ["A", "B"]))
    assert math.isfinite(float(groups[0].rewards[0]))
    assert np.isnan(groups[1].rewards).all()  # the learner drops and counts such groups
    with pytest.raises(ValueError, match="no rollouts for requests"):
        scorer.score([good, bad], _rollouts("good", ["A"]))  # a lost request is an error, never silent


def test_published_reward_model_weights_replace_the_scorers(ray_cluster: None, reward_dir: Path) -> None:
    scorer = ScorerActor(ScorerSpec(str(reward_dir), ModelConfig(), RewardConfig(), micro_batch_size=4, seed=0))
    trained = RewardLearner(reward_dir, ModelConfig(), LearnerConfig(micro_batch_size=4, lr=1e-2), seed=0)
    with torch.no_grad():
        trained.reward_model.head.bias.add_(3.0)  # an "updated" R: every score moves by +3
    request = _request("q")
    rm_requests = [reward_model_request(request, x) for x in _rollouts("q", ["A", "B"])]
    before = scorer.reward.score(rm_requests)
    published = publish_weights(trained.export_weights(), version=4)
    assert scorer.load_weights(published) == 4
    after = scorer.reward.score(rm_requests)
    np.testing.assert_allclose(after, trained.score(rm_requests), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(after) - np.asarray(before), 3.0, rtol=1e-4)
    # No copy into R: its parameters are views of the object-store buffer this process maps for the version.
    [buffer] = fetch_weights(published).buffers.values()
    lo, hi = buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes
    assert all(lo <= p.data_ptr() < hi for p in scorer.reward.model.parameters())
