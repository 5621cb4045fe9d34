"""The reward-model learner: regression on MedGR²'s graded data, bad-input accounting, persistence.

Graded data comes from the real builder (`algo.perturb.build_graded_samples`) on real images
(pydicom-data CT, MR, radiograph, ultrasound; downscaled to 56 px so a step is cheap) rendered with the
real reward prompt (`prompts.reward_prompt`). Held-out examples are fresh corruptions (another seed:
other wrong options, other shuffles, other image pairings) of the training questions.

A randomly initialised ~0.4M-parameter VLM, 100 steps of 32 examples with warm-up + cosine decay:
held-out MSE falls and garbled text (incoherent) and the image/text mismatch (irrelevant) score below
the intact texts. The scalar head does not separate faithful from perturbed samples (only the answer
letter differs; measured 3.56 vs 3.56 here, 3.09 vs 2.53 with an earlier tokenizer build), which is
why the cycle's R is a verifier: with R's own belief in the answer in its score, faithful samples
score above perturbed ones by a wide margin after the same budget (the second test).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgr2_ray.algo.perturb import build_graded_samples
from medgr2_ray.config import GradedDataConfig, LearnerConfig, ModelConfig
from medgr2_ray.data.store import read_rgb, write_png
from medgr2_ray.learner.reward import RewardLearner
from medgr2_ray.models.reward_head import RewardModel
from medgr2_ray.prompts import reward_prompt
from medgr2_ray.types import GenerationRequest, Modality, RewardExample, RewardObjective, Sample, TaskType

FAMILIES = {  # file: (modality, question phrasings, options, correct answer)
    "CT_small.dcm": (Modality.CT, ("Which organ is outlined in this abdominal CT?", "In this abdominal CT, which organ is seen?",
                                   "Which abdominal organ does this CT slice show?", "Name the organ in this abdominal CT slice."),
                     ("liver", "kidney", "spleen", "pancreas"), "liver"),
    "MR_small.dcm": (Modality.MR, ("Which brain structure is visible on this head MR?", "On this head MR, which brain structure is seen?",
                                   "Which structure of the brain does this MR show?", "Name the brain structure on this head MR."),
                     ("ventricle", "cerebellum", "pons", "thalamus"), "ventricle"),
    "RG1_UNCR.dcm": (Modality.XRAY, ("Which organ dominates this chest radiograph?", "In this chest X-ray, which organ is seen?",
                                     "Which thoracic organ does this radiograph show?", "Name the organ on this chest film."),
                     ("lungs", "heart", "trachea", "ribs"), "lungs"),
    "US1_UNCR.dcm": (Modality.ULTRASOUND, ("Which probe setting made this ultrasound?", "In this sonogram, which mode is used?",
                                           "Which ultrasound mode does this image show?", "Name the sonography mode used here."),
                     ("B-mode", "M-mode", "Doppler", "elastography"), "B-mode"),
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory, dicom_rgb: Callable[[str], np.ndarray]) -> list[Sample]:
    out_dir = tmp_path_factory.mktemp("rm-images")
    samples = []
    for name, (modality, phrasings, options, answer) in FAMILIES.items():
        path = out_dir / f"{name}.png"
        write_png(np.asarray(Image.fromarray(dicom_rgb(name)).resize((56, 56))), path)
        for i, question in enumerate(phrasings):
            samples.append(Sample(f"{name[:2]}{i}", name, str(path), question, options, answer, TaskType.ANATOMY, modality))
    return samples


def graded_examples(samples: list[Sample], seed: int) -> list[RewardExample]:
    """Graded samples rendered as reward-model requests (image read from the sample's path; the sample
    rides along, as `algo.requests.reward_request` sends it, for a verifier to answer)."""
    images: dict[str, np.ndarray] = {}
    out = []
    for graded in build_graded_samples(samples, GradedDataConfig(), seed=seed):
        s = graded.sample
        image = images.setdefault(s.image_path, read_rgb(s.image_path))
        request = GenerationRequest(s.sample_id, reward_prompt(s), images=(image,), sample=s)
        out.append(RewardExample(request, graded.target, graded.kind))
    return out


def _mean_by_kind(learner: RewardLearner, examples: list[RewardExample]) -> dict[str, float]:
    scores = learner.score([e.request for e in examples])
    kinds = sorted({e.kind for e in examples})
    return {k: float(np.mean([s for s, e in zip(scores, examples) if e.kind == k])) for k in kinds}


def test_reward_regression_learns_graded_structure(tiny_dir: Path, samples: list[Sample]) -> None:
    train, held_out = graded_examples(samples, seed=0), graded_examples(samples, seed=1)
    # Warm-up and cosine decay: MSE on targets in [-6, 10] makes constant-rate training jumpy at the end.
    cfg = LearnerConfig(lr=5e-3, micro_batch_size=32, warmup_steps=10, schedule="cosine", schedule_steps=100)
    learner = RewardLearner(tiny_dir, ModelConfig(), cfg, seed=0)
    start = learner.eval_loss(held_out)["loss"]
    rng = np.random.default_rng(0)
    for _ in range(100):
        metrics = learner.rm_step([train[i] for i in rng.choice(len(train), 32, replace=False)])
        assert metrics["examples_trained"] == 32
    end = learner.eval_loss(held_out)["loss"]
    means = _mean_by_kind(learner, held_out)
    print(f"held-out MSE {start:.2f} -> {end:.2f}; mean score by kind {means}")
    assert end < 0.75 * start, (start, end)
    assert min(means["faithful"], means["perturbed"]) > means["incoherent"] > means["irrelevant"], means


def test_verifier_separates_faithful_from_perturbed(tiny_dir: Path, samples: list[Sample]) -> None:
    """R learns to answer (answer steps on the faithful samples), then to grade: held-out perturbed
    samples (the same text with another option as the answer) score far below faithful ones."""
    train, held_out = graded_examples(samples, seed=0), graded_examples(samples, seed=1)
    faithful = [e for e in train if e.kind == "faithful"]
    cfg = LearnerConfig(lr=5e-3, micro_batch_size=32, warmup_steps=10, schedule="cosine", schedule_steps=100)
    objective = RewardObjective(verifier=True, answer_loss=1.0, low=-6.0, high=10.0)
    learner = RewardLearner(tiny_dir, ModelConfig(), cfg, seed=0, objective=objective)
    assert learner.reward_model.is_verifier
    rng = np.random.default_rng(0)
    first = learner.answer_step(faithful)
    for _ in range(39):
        last = learner.answer_step(faithful)
    assert last["answer_nll"] < 0.5 * first["answer_nll"], (first, last)
    for _ in range(60):
        metrics = learner.rm_step([train[i] for i in rng.choice(len(train), 32, replace=False)])
    means = _mean_by_kind(learner, held_out)
    print(f"answer NLL {first['answer_nll']:.2f} -> {last['answer_nll']:.2f}; p(right) {metrics['p_right']:.2f}, "
          f"p(wrong) {metrics['p_wrong']:.2f}; mean score by kind {means}")
    assert metrics["p_right"] > 0.5 > 0.1 > metrics["p_wrong"], metrics
    assert means["faithful"] > means["perturbed"] + 4.0, means
    assert means["faithful"] > means["incoherent"], means


def test_bad_examples_are_counted_and_scores_line_up(tiny_dir: Path, samples: list[Sample], tmp_path: Path) -> None:
    good = graded_examples([samples[0], samples[4]], seed=0)  # two images: irrelevant pairs need both
    bad_image = RewardExample(GenerationRequest("bad", "text", images=(np.zeros((8, 8, 3), np.float32),)), 10.0, "faithful")
    bad_target = RewardExample(good[0].request, float("nan"), "faithful")
    learner = RewardLearner(tiny_dir, ModelConfig(), LearnerConfig(lr=1e-3), seed=0)
    metrics = learner.rm_step([*good, bad_image, bad_target])
    assert metrics["examples_in"] == len(good) + 2 and metrics["examples_trained"] == len(good)
    assert metrics["examples_dropped_bad_request"] == 1 and metrics["examples_dropped_bad_target"] == 1
    scores = learner.score([good[0].request, bad_image.request, good[1].request])
    assert np.isnan(scores[1]) and np.isfinite([scores[0], scores[2]]).all()

    # Exact persistence: a checkpoint restores the same scores; save_pretrained is a RewardModel dir.
    learner.save_checkpoint(tmp_path / "ckpt")
    fresh = RewardLearner(tiny_dir, ModelConfig(), LearnerConfig(lr=1e-3), seed=1)
    fresh.load_checkpoint(tmp_path / "ckpt")
    requests = [e.request for e in good]
    assert fresh.score(requests) == learner.score(requests)
    reloaded = RewardLearner(learner.save_pretrained(tmp_path / "rm"), ModelConfig(), LearnerConfig(), seed=7)
    assert np.allclose(reloaded.score(requests), learner.score(requests), atol=1e-5)
    assert isinstance(RewardModel.from_pretrained(tmp_path / "rm"), RewardModel)
