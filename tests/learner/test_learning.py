"""Learning tests: SFT lowers held-out loss; GRPO with real HF-engine rollouts raises mean reward.

The verifiable task is MedGR²'s in miniature: a four-option modality question about a real CT or MR
slice (pydicom-data), answered with an option letter, rewarded by `algo.rewards.accuracy_reward`.
A random tiny model almost never writes a lone option letter (1 token in 2048), so GRPO would see no
signal; as in the paper, stage 1 (SFT) comes first — here on *uniformly random* letters, which
teaches the answer format but not which letter is right (reward ~0.25, chance). Stage 2 (GRPO) must
then find the right letter for each image from the reward alone. The loop is the synchronous
algorithm the Ray controller runs: generate with the engine, score, `grpo_step`, then
`engine.load_weights(learner.export_weights())`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medgr2_ray.algo.rewards import accuracy_reward
from medgr2_ray.config import EngineConfig, GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.engines.hf import HFEngine
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.types import GenerationRequest, Modality, Sample, SamplingParams, ScoredGroup, SFTExample, TaskType

OPTIONS = ("CT", "MR", "X-Ray", "Ultrasound")
PHRASES = (
    "Which modality is this? A. CT B. MR C. X-Ray D. Ultrasound. Answer with a letter.",
    "Options: A. CT B. MR C. X-Ray D. Ultrasound. Which one is shown?",
    "Pick the imaging modality (A-D).",
    "What kind of scan is this? Letter only.",
)


def modality_request(i: int, image: np.ndarray, answer: str, phrase: str, system: str = "") -> GenerationRequest:
    """A multiple-choice modality question about `image` whose correct option is `answer`."""
    sample = Sample(
        sample_id=f"s{i}", image_id=f"img{i}", image_path="", question=phrase, options=OPTIONS, answer=answer,
        task_type=TaskType.MODALITY, modality=Modality.CT if answer == "CT" else Modality.MR,
    )
    return GenerationRequest(f"q{i}", phrase, images=(image,), system=system, sample=sample)


@pytest.fixture(scope="module")
def questions(ct_image: np.ndarray, mr_image: np.ndarray) -> list[GenerationRequest]:
    """Eight questions: four phrasings, each about the CT and the MR slice."""
    return [
        modality_request(i, ct_image if i % 2 == 0 else mr_image, "CT" if i % 2 == 0 else "MR", PHRASES[i % 4])
        for i in range(8)
    ]


def test_sft_lowers_held_out_loss(tiny_dir: Path, ct_image: np.ndarray, mr_image: np.ndarray) -> None:
    def examples(phrases: tuple[str, ...], system: str) -> list[SFTExample]:
        out = []
        for j, phrase in enumerate(phrases):
            for image, answer in ((ct_image, "CT"), (mr_image, "MR")):
                out.append(SFTExample(modality_request(j, image, answer, phrase, system), f"The modality is {answer}."))
        return out

    train = examples(PHRASES[:3], "")
    held_out = examples(PHRASES[3:], "You are a radiologist.")  # unseen phrasing and system prompt
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(lr=3e-3, micro_batch_size=4), GRPOConfig(), seed=0)
    start = learner.eval_loss(held_out)["loss"]
    for _ in range(15):
        learner.sft_step(train)
    end = learner.eval_loss(held_out)["loss"]
    print(f"SFT held-out loss {start:.3f} -> {end:.3f}")
    assert end < 0.5 * start, (start, end)


@pytest.fixture(scope="module")
def format_tuned_dir(tiny_dir: Path, questions: list[GenerationRequest], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1: SFT on uniformly random option letters (the format, not the answer); saved as an HF dir."""
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(lr=5e-3, micro_batch_size=16), GRPOConfig(), seed=0)
    # Each question appears with all four letters equally often: no letter is preferred for any image.
    warm = [SFTExample(q, "ABCD"[(i + i // 2) % 4]) for i, q in enumerate(questions * 2)]
    for _ in range(30):
        metrics = learner.sft_step(warm)
    assert metrics["loss"] < 1.0  # it answers with one letter and stops
    return learner.save_pretrained(tmp_path_factory.mktemp("format-tuned"))


def test_grpo_raises_mean_reward_with_engine_rollouts(format_tuned_dir: Path, questions: list[GenerationRequest]) -> None:
    grpo = GRPOConfig(temperature=1.0, group_size=8, max_new_tokens=2)
    learner = PolicyLearner(format_tuned_dir, ModelConfig(), LearnerConfig(lr=1e-3, micro_batch_size=16), grpo, seed=0)
    engine = HFEngine(format_tuned_dir, ModelConfig(), EngineConfig(max_batch_size=64), seed=0)
    sampling = SamplingParams(n=grpo.group_size, temperature=grpo.temperature, max_new_tokens=grpo.max_new_tokens)
    rewards: list[float] = []
    for _ in range(20):
        rollouts = engine.generate(questions, sampling)
        assert all(r.weight_version == learner.version for r in rollouts)  # synchronous: on-policy
        groups = []
        for k, question in enumerate(questions):
            mine = tuple(rollouts[k * grpo.group_size : (k + 1) * grpo.group_size])
            scores = accuracy_reward([question.sample] * len(mine), [r.text for r in mine])  # type: ignore[list-item]
            groups.append(ScoredGroup(question.request_id, question, mine, np.asarray(scores, np.float32)))
        metrics = learner.grpo_step(groups)
        rewards.append(metrics["reward_mean"])
        engine.load_weights(learner.export_weights(), learner.version)
    start, end = float(np.mean(rewards[:3])), float(np.mean(rewards[-5:]))
    print(f"GRPO mean reward per step: {np.round(rewards, 3).tolist()}")
    assert start < 0.35  # chance level after format-only SFT
    assert end > start + 0.15, rewards
