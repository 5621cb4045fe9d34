"""Template bootstrapper: verifiable multiple-choice samples written from image metadata alone.

OmniMedVQA built many of its questions from dataset labels; this does the same for our pools, so
the CPU default has ground-truth seeds before any generator exists and the reward model has a
"faithful" class. Two task types are verifiable from metadata: modality recognition (from the DICOM
Modality tag or the source's label) and anatomy identification (from BodyPartExamined or the source's
label). Distractors come from the controlled vocabulary and never overlap the truth (no "PET" for a
nuclear-medicine image, no "brain" for a head image, no histology for a microscopy image). Phrasings
are drawn from the stems OmniMedVQA uses. Every draw is seeded per (seed, image, task, k), so the
output does not depend on the order of the input images.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from medgr2_ray.data.vocab import (ANATOMY_REGION, EXTRA_DISTRACTORS, MODALITY_PHRASES, display_name,
                                   modality_from_text)
from medgr2_ray.types import MedImage, Modality, Provenance, Sample, TaskType

# Stems as OmniMedVQA phrases modality questions (the most frequent ones in the authors' test set).
MODALITY_STEMS: tuple[str, ...] = (
    "What imaging modality was used to capture this image?",
    "What modality is used to capture this image?",
    "What modality was used to take this image?",
    "What imaging modality is used to take this image?",
    "What imaging technique was utilized to capture this picture?",
    "What type of imaging was utilized to capture this image?",
    "Which imaging technique was employed to capture this picture?",
    "What is the imaging modality used to capture this picture?",
    "What method is utilized to capture this image in medicine?",
    "What type of imaging technique is utilized to capture this visual?",
)
ANATOMY_STEMS: tuple[str, ...] = (
    "Which part of the body is shown in this image?",
    "What anatomical region does this image depict?",
    "Which organ or body region is the focus of this image?",
    "What body part is being imaged here?",
    "In which part of the body was this image taken?",
    "Which anatomical structure is visible in this image?",
)
# Modalities that are (partly) the same thing: never offered as wrong answers for each other.
_CONFUSABLE: dict[Modality, frozenset[Modality]] = {
    Modality.HISTOPATHOLOGY: frozenset({Modality.MICROSCOPY}),
    Modality.MICROSCOPY: frozenset({Modality.HISTOPATHOLOGY}),
}
# Regions too broad or too small for an anatomy question (a whole-body scan shows the knee too).
_NO_ANATOMY_QUESTION = frozenset({"whole body", "cell", "tissue"})
_TEMPLATE_TASKS = (TaskType.MODALITY, TaskType.ANATOMY)


def render_question(stem: str, options: Sequence[str], inline_options: bool = True) -> str:
    """OmniMedVQA's question shape: the stem, then the options joined by 'or' when inline."""
    if not inline_options:
        return stem
    return f"{stem} Please choose one of the following: {' or '.join(options)}. You must pick only one answer."


def _modality_options(truth: Modality, rng: random.Random, k: int) -> tuple[str, list[str]]:
    """The correct phrase and k-1 distractors (other modalities' phrases and extra non-imaging names)."""
    excluded = {truth} | _CONFUSABLE.get(truth, frozenset())
    pool = [rng.choice(phrases) for m, phrases in MODALITY_PHRASES.items() if m not in excluded]
    pool += [name for name, covers in EXTRA_DISTRACTORS.items() if truth not in covers]
    # safety net: a distractor that the vocabulary reads as the truth would make the sample wrong
    pool = [p for p in pool if modality_from_text(p) not in excluded]
    return rng.choice(MODALITY_PHRASES[truth]), rng.sample(sorted(pool), k - 1)


def _anatomy_options(truth: str, rng: random.Random, k: int) -> tuple[str, list[str]]:
    """The truth and k-1 labels from k-1 distinct other regions."""
    region = ANATOMY_REGION[truth]
    by_region: dict[str, list[str]] = {}
    for label, reg in ANATOMY_REGION.items():
        if reg != region and label not in _NO_ANATOMY_QUESTION and reg not in _NO_ANATOMY_QUESTION:
            by_region.setdefault(reg, []).append(label)
    regions = rng.sample(sorted(by_region), k - 1)
    return truth.capitalize(), [rng.choice(sorted(by_region[r])).capitalize() for r in regions]


def _sample_id(seed: int, image_id: str, task: TaskType, k: int) -> str:
    digest = hashlib.sha256(f"{seed}|{image_id}|{task.value}|{k}".encode()).hexdigest()
    return "tpl-" + digest[:16]


def template_sample(image: MedImage, task: TaskType, seed: int, k: int = 0, *, num_options: int = 4,
                    inline_options: bool = True) -> Sample | None:
    """One multiple-choice sample of `task` for `image`, or None when the metadata cannot verify it
    (modality Other, anatomy unknown or too broad)."""
    rng = random.Random(f"{seed}|{image.image_id}|{task.value}|{k}")
    if task == TaskType.MODALITY:
        if image.modality == Modality.OTHER:
            return None
        answer, distractors = _modality_options(image.modality, rng, num_options)
        stem = rng.choice(MODALITY_STEMS)
        rationale = (f"The source metadata records this image as {display_name(image.modality)}, and it "
                     f"shows that modality's typical appearance.")
    elif task == TaskType.ANATOMY:
        if image.anatomy not in ANATOMY_REGION or image.anatomy in _NO_ANATOMY_QUESTION:
            return None
        answer, distractors = _anatomy_options(image.anatomy, rng, num_options)
        stem = rng.choice(ANATOMY_STEMS)
        rationale = f"The image's metadata records the imaged region as {image.anatomy}."
    else:
        raise ValueError(f"template_sample: task {task.value!r} cannot be verified from metadata; "
                         f"use one of {[t.value for t in _TEMPLATE_TASKS]}")
    options = [answer, *distractors]
    rng.shuffle(options)
    return Sample(
        sample_id=_sample_id(seed, image.image_id, task, k), image_id=image.image_id,
        image_path=image.path, question=render_question(stem, options, inline_options),
        options=tuple(options), answer=answer, task_type=task, modality=image.modality,
        rationale=rationale, dataset="template", provenance=Provenance(producer="template"),
    )


def make_template_samples(images: Sequence[MedImage], seed: int, *,
                          tasks: Sequence[TaskType] = _TEMPLATE_TASKS, per_image: int = 1,
                          num_options: int = 4, inline_options: bool = True) -> list[Sample]:
    """Verifiable multiple-choice samples: `per_image` per (image, task) where metadata allows.

    Images whose modality is Other get no modality question; images with unknown or whole-body
    anatomy get no anatomy question (count them with `len(images) * len(tasks) * per_image - len(out)`).
    Deterministic: same images, seed and settings give the same samples in any input order (the
    output is sorted by image id, task and k).
    """
    if not 2 <= num_options <= 6:
        raise ValueError(f"make_template_samples: num_options must be 2..6, got {num_options}")
    out: list[Sample] = []
    for image in sorted(images, key=lambda i: i.image_id):
        for task in tasks:
            for k in range(per_image):
                sample = template_sample(image, task, seed, k, num_options=num_options,
                                         inline_options=inline_options)
                if sample is not None:
                    out.append(sample)
    return out
