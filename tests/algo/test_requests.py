"""Round plumbing: every generator output becomes a sample or a counted failure; prompts carry the
right image; augmentation changes pixels but never the target."""

from __future__ import annotations

import numpy as np

from medgr2_ray.algo.perturb import build_graded_samples
from medgr2_ray.config import AugmentConfig, GradedDataConfig
from medgr2_ray.algo.requests import (generator_requests, generator_sft_examples, parse_candidates, reward_examples,
                                    solver_sft_examples)
from medgr2_ray.prompts import render_sample
from medgr2_ray.types import MedImage, Modality, PromptStrategy, Rollout, Sample, TaskType

IMAGES = {
    f"img{i}": MedImage(f"img{i}", f"/pool/img{i}.png", mod, "head", "test", "CC0", f"study{i}", 8, 8)
    for i, mod in enumerate([Modality.CT, Modality.MR, Modality.XRAY])
}
PIXELS = {k: np.full((8, 8, 3), 40 * i, np.uint8) for i, k in enumerate(IMAGES)}


def lookup(image_id: str) -> np.ndarray:
    return PIXELS[image_id]


def _seed(image: MedImage, answer: str) -> Sample:
    return Sample(f"s-{image.image_id}", image.image_id, image.path, "Which modality?", ("CT", "MR", "X-Ray"),
                  answer, TaskType.MODALITY, image.modality)


def _rollout(request_id: str, text: str, index: int = 0) -> Rollout:
    return Rollout(request_id, index, (1,), (2,), text, np.zeros(1, np.float32), "stop", 7)


def test_generator_round_trip_counts_everything() -> None:
    requests, meta = generator_requests(list(IMAGES.values()), [TaskType.MODALITY],
                                        [PromptStrategy.DIRECT, PromptStrategy.STEP_BY_STEP], lookup, 1)
    assert len(requests) == 6 and len(meta) == 6
    assert all(r.images[0] is PIXELS[meta[r.request_id].image.image_id] for r in requests)
    good = render_sample(_seed(IMAGES["img0"], "CT"))
    rid = requests[0].request_id
    rollouts = [_rollout(rid, good, 0), _rollout(rid, good, 1), _rollout(requests[1].request_id, "nonsense", 0)]
    parsed = parse_candidates(rollouts, meta, 1)
    assert len(parsed.samples) == 1 and parsed.duplicates == 1 and len(parsed.failures) == 1
    assert len(parsed.samples) + parsed.duplicates + len(parsed.failures) == len(rollouts)
    sample = parsed.samples[0]
    assert sample.answer == "CT" and sample.provenance.model_version == 7 and sample.provenance.round == 1
    assert sample.provenance.prompt_strategy == PromptStrategy.DIRECT
    assert parsed.failure_counts() == {"missing 'Question:' line": 1}


def test_generator_sft_targets_are_rendered_samples() -> None:
    seeds = [_seed(IMAGES["img1"], "MR")]
    (example,) = generator_sft_examples(seeds, IMAGES, lookup)
    assert example.target == render_sample(seeds[0])
    assert "Modality: MR" in example.request.prompt and example.request.images[0] is PIXELS["img1"]


def test_reward_examples_follow_the_graded_image() -> None:
    seeds = [_seed(img, img.modality.value) for img in IMAGES.values()]
    graded = build_graded_samples(seeds, GradedDataConfig(), seed=0)
    examples = reward_examples(graded, lookup)
    assert sorted({e.target for e in examples}) == [-6.0, 0.0, 6.0, 10.0]
    for g, e in zip(graded, examples):
        assert e.request.images[0] is PIXELS[g.sample.image_id] and e.kind == g.kind
        if g.kind == "irrelevant":
            parent = next(s for s in seeds if s.sample_id == g.sample.provenance.parent_id)
            assert g.sample.image_id != parent.image_id


def test_solver_sft_augments_pixels_not_targets() -> None:
    seeds = [_seed(IMAGES["img2"], "X-Ray")]
    plain = solver_sft_examples(seeds, lookup, None)[0]
    aug = solver_sft_examples(seeds, lookup, np.random.default_rng(0))[0]
    assert plain.target == aug.target == "X-Ray"
    assert plain.request.images[0] is PIXELS["img2"]
    assert not np.array_equal(aug.request.images[0], PIXELS["img2"])
    assert "Answer" not in plain.request.prompt.split("\n")[0]


def test_solver_sft_uses_the_configured_augmentation_strengths() -> None:
    """`solver.augmentation` reaches the pixels: always-grayscale without noise gives equal channels, no crop,
    rotation or flip keeps the image's size; the default (grayscale 0.3) keeps colour in most draws."""
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0], colour[..., 1] = 200, np.arange(16, dtype=np.uint8)[None, :] * 8
    seeds = [_seed(IMAGES["img0"], "CT")] * 8
    gray = AugmentConfig(grayscale_prob=1.0, noise_std=0.0, crop_scale=1.0, rotate_degrees=0.0, flip_prob=0.0)
    out = solver_sft_examples(seeds, lambda _: colour, np.random.default_rng(0), gray)
    for example in out:
        image = example.request.images[0].astype(int)
        assert image.shape == colour.shape
        assert np.abs(image[..., 0] - image[..., 1]).max() <= 1 and np.abs(image[..., 1] - image[..., 2]).max() <= 1
    default = solver_sft_examples(seeds, lambda _: colour, np.random.default_rng(0))
    coloured = sum(np.abs(e.request.images[0].astype(int)[..., 0] - e.request.images[0][..., 2]).max() > 10
                   for e in default)
    assert coloured >= 4
