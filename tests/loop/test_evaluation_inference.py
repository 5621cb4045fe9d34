"""Solver evaluation scores options with the inference-only `PolicyScorer`, not a training learner: the
task's likelihood accuracy is the one a `PolicyLearner` (the old path) gives on the same questions, and
its greedy accuracy comes from the HF engine. The task function runs in-process (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

from medgr2_ray.config import load_config
from medgr2_ray.data.store import read_rgb, sample_to_dict, write_png
from medgr2_ray.eval.protocols import accuracy_table, choose_by_likelihood
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.loop.evaluation import _evaluate
from medgr2_ray.algo.requests import solver_requests
from medgr2_ray.types import Modality, Sample, TaskType
from tests.loop.conftest import _dicom_rgb

OPTIONS = ("CT", "MR", "X-Ray", "Ultrasound")


def test_evaluation_likelihood_equals_the_learner_path(policy_dir: Path, tmp_path: Path) -> None:
    samples = []
    for name, modality in (("CT_small.dcm", Modality.CT), ("MR_small.dcm", Modality.MR)):
        path = tmp_path / f"{name}.png"
        write_png(_dicom_rgb(name), path)
        for k, answer in enumerate(OPTIONS[:2]):
            samples.append(Sample(f"{name}-{k}", name, str(path), f"Which modality is this? ({k})", OPTIONS, answer,
                                  TaskType.MODALITY, modality))
    cfg = load_config(None, ["grpo.max_new_tokens=4", "learner.micro_batch_size=3"])
    result = _evaluate(cfg.model_dump(mode="json"), str(policy_dir), [sample_to_dict(s) for s in samples])

    learner = PolicyLearner(policy_dir, cfg.policy, cfg.learner, cfg.grpo, cfg.run.seed)  # what it used to build
    requests = solver_requests(samples, lambda image_id: read_rgb(tmp_path / f"{image_id}.png"))
    expected = accuracy_table(samples, choose_by_likelihood(learner, samples, requests))
    assert (result["correct"], result["total"], result["by_modality"]) == (
        expected.correct, expected.total, expected.by_modality)
    assert 0.0 <= result["greedy_accuracy"] <= 1.0 and result["blind_bound"] == expected.blind_bound
