"""Inference-only models (`learner/inference.py`): the solver scorer used by evaluation and R's scorer
used by the scorer pool give the training learners' numbers exactly, and build no optimizer, no LoRA
wrapper and no autograd state."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig
from medgr2_ray.eval.protocols import OptionScorer, choose_by_likelihood
from medgr2_ray.learner.inference import PolicyScorer, RewardScorer
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.learner.reward import RewardLearner
from medgr2_ray.learner.trainer import is_peft
from medgr2_ray.models.reward_head import RewardModel, VerifierInit
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import GenerationRequest, Modality, Sample, TaskType

OPTIONS = ("CT", "MR", "X-Ray", "Ultrasound")


def _optimizers_holding(module: torch.nn.Module) -> list[torch.optim.Optimizer]:
    """Every live optimizer in this process that updates a parameter of `module`."""
    mine = {id(p) for p in module.parameters()}
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated module proxies warns
        warnings.simplefilter("ignore", FutureWarning)
        optimizers = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]
    return [o for o in optimizers if any(id(p) in mine for g in o.param_groups for p in g["params"])]


def _assert_inference_only(model: torch.nn.Module) -> None:
    assert not _optimizers_holding(model), "an optimizer was built for an inference-only model"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(".lora_" in n for n, _ in model.named_parameters())


def _samples(requests: list[GenerationRequest]) -> list[Sample]:
    return [Sample(f"s{i}", f"i{i}", "", r.prompt, OPTIONS, OPTIONS[i % 4], TaskType.MODALITY, Modality.CT)
            for i, r in enumerate(requests)]


def test_policy_scorer_equals_the_learner_and_builds_no_optimizer(
    tiny_dir: Path, mixed_requests: list[GenerationRequest]
) -> None:
    lora = ModelConfig(lora=LoraConfig(enabled=True, r=4, alpha=8))  # ignored: a directory is whole
    scorer = PolicyScorer(tiny_dir, lora, micro_batch_size=2)
    typed: OptionScorer = scorer  # what evaluation needs (a Protocol: checked by type checkers)
    assert typed is scorer and not is_peft(scorer.model)
    assert not hasattr(scorer, "strategy") and not hasattr(scorer, "optimizer")
    _assert_inference_only(scorer.model)

    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(micro_batch_size=2), GRPOConfig(), seed=0)
    assert _optimizers_holding(learner.model)  # the check above can fail: a learner has one
    completions = [learner.target_token_ids(t) for t in ("CT", "the right lung", "MR")]
    assert [scorer.target_token_ids(t) for t in ("CT", "the right lung", "MR")] == completions
    for temperature in (1.0, 0.7):
        ours = scorer.score_completions(mixed_requests, completions, temperature=temperature)
        theirs = learner.score_completions(mixed_requests, completions, temperature=temperature)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    samples = _samples(mixed_requests)
    assert choose_by_likelihood(scorer, samples, mixed_requests) == choose_by_likelihood(learner, samples, mixed_requests)


@pytest.mark.parametrize("kind", ["scalar", "verifier"])
def test_reward_scorer_equals_the_learner_and_takes_published_state(
    kind: str, tmp_path: Path, mixed_requests: list[GenerationRequest]
) -> None:
    backbone = ensure_model_dir(ModelConfig(), tmp_path / "cache", seed=0, role="reward")
    model_dir = backbone
    if kind == "verifier":
        model_dir = tmp_path / "rm"
        RewardModel.from_backbone(backbone, seed=0, verifier=VerifierInit(-6.0, 10.0)).save_pretrained(model_dir)
    requests = [r if r.images else GenerationRequest(r.request_id, r.prompt, (np.zeros((56, 56, 3), np.uint8),))
                for r in mixed_requests]
    requests = [GenerationRequest(r.request_id, r.prompt, r.images, sample=s)
                for r, s in zip(requests, _samples(requests))]
    scorer = RewardScorer(model_dir, ModelConfig(), micro_batch_size=2, seed=0)
    _assert_inference_only(scorer.model)
    assert scorer.reward_model.is_verifier == (kind == "verifier")

    learner = RewardLearner(model_dir, ModelConfig(), LearnerConfig(micro_batch_size=2, lr=1e-2), seed=0)
    assert scorer.score(requests) == learner.score(requests)  # bit for bit: the same code and weights
    with torch.no_grad():
        learner.reward_model.head.bias.add_(2.0)  # an "updated" R
    state = learner.export_state()
    assert state is not None
    scorer.load_state(state)
    np.testing.assert_allclose(scorer.score(requests), learner.score(requests), rtol=0, atol=1e-6)
    _assert_inference_only(scorer.model)
