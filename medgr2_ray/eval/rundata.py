"""The images and samples one run works on: the study split, the template seeds and the held-out test.

`prepare_data` loads the configured pool, splits it by study (never by slice), writes modality and
anatomy seed questions for the training images, and draws a held-out test balanced by modality whose
distractors come from the test set's own modalities. Pure: no Ray, no models.
"""

from __future__ import annotations

from dataclasses import dataclass

from medgr2_ray.config import Config
from medgr2_ray.data.seedpool import load_configured_pool
from medgr2_ray.data.split import split_by_study
from medgr2_ray.data.store import ImagePool
from medgr2_ray.data.templates import make_template_samples
from medgr2_ray.eval.protocols import balanced_modality_test, modality_question
from medgr2_ray.types import MedImage, Modality, Sample, TaskType


@dataclass(frozen=True)
class CycleData:
    """The images and samples a run works on."""

    pool: ImagePool
    train: list[MedImage]
    test: list[MedImage]
    seeds: list[Sample]
    test_samples: list[Sample]


def prepare_data(cfg: Config) -> CycleData:
    """Pool, study split, seeds (modality questions over the pool's modalities + anatomy templates),
    and the modality-balanced held-out test set."""
    pool = load_configured_pool(cfg.data.pool, cfg.data.cache_dir)
    train, test = split_by_study(pool.images, cfg.data.test_fraction, cfg.run.seed)
    modalities = sorted({i.modality for i in pool.images if i.modality != Modality.OTHER}, key=lambda m: m.value)
    seeds = [q for image in train for k in range(cfg.cycle.seeds_per_image)
             if (q := modality_question(image, modalities, cfg.run.seed, k)) is not None]
    if TaskType.ANATOMY.value in cfg.cycle.tasks:
        seeds += make_template_samples(train, cfg.run.seed, tasks=[TaskType.ANATOMY], per_image=cfg.cycle.seeds_per_image,
                                       inline_options=False)
    # Test distractors come from the test set's own modalities: no option is wrong a priori, so an
    # image-blind ordering stays near chance (the reported blind bound says how near).
    test_modalities = sorted({i.modality for i in test if i.modality != Modality.OTHER}, key=lambda m: m.value)
    test_samples = balanced_modality_test(
        test, lambda image, k: modality_question(image, test_modalities, cfg.run.seed + 1, k),
        cfg.solver.eval_per_modality, cfg.run.seed)
    return CycleData(pool, train, test, seeds, test_samples)
