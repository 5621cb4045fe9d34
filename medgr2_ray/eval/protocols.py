"""Evaluation protocols for the solver on held-out data: balanced test sets, option-likelihood choice,
and the image-blind bound.

Why length-normalised likelihood: summed log-likelihood favours one-token options (an untrained model
scored 50% that way on a study-weighted set), so each option is scored by the mean log-prob of its
tokens. Why a blind bound: with few studies a fixed preference among option texts can score far above
chance; the best such ordering, computed exactly, is reported beside every accuracy.
No Ray; the model side is any object with `score_completions` and `target_token_ids` (PolicyLearner).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medgr2_ray.types import GenerationRequest, MedImage, Modality, Sample, TaskType


class OptionScorer(Protocol):
    """What the likelihood protocol needs from a model (PolicyLearner provides it)."""

    def target_token_ids(self, text: str) -> tuple[int, ...]: ...

    def score_completions(
        self, requests: Sequence[GenerationRequest], completions: Sequence[Sequence[int]],
        temperature: float | None = None,
    ) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class EvalResult:
    """Accuracy overall and by group, with the counts behind each number."""

    accuracy: float
    correct: int
    total: int
    by_modality: dict[str, float]
    by_task: dict[str, float]
    blind_bound: float


def balanced_modality_test(images: Sequence[MedImage], make: Callable[[MedImage, int], Sample | None],
                           per_modality: int, seed: int, min_modalities: int = 2) -> list[Sample]:
    """`per_modality` questions for every modality of the held-out images.

    Images are taken round-robin over studies (one big study must not dominate); a modality with fewer
    images than `per_modality` gets further questions on the same images with another draw `k`
    (another phrasing and option set), so every modality weighs the same in the accuracy.
    """
    by_mod: dict[Modality, dict[str, list[MedImage]]] = defaultdict(lambda: defaultdict(list))
    for image in images:
        by_mod[image.modality][image.study_id].append(image)
    by_mod.pop(Modality.OTHER, None)
    if len(by_mod) < min_modalities:
        raise ValueError(f"balanced test: only {len(by_mod)} modalities in the held-out images")
    rng = random.Random(seed)
    out: list[Sample] = []
    for modality in sorted(by_mod, key=lambda m: m.value):
        studies = [sorted(v, key=lambda i: i.image_id) for _, v in sorted(by_mod[modality].items())]
        for study in studies:
            rng.shuffle(study)
        order = [s[i] for i in range(max(map(len, studies))) for s in studies if i < len(s)]
        drawn = [make(order[j % len(order)], j // len(order)) for j in range(per_modality)]
        out.extend(s for s in drawn if s is not None)
    return out


def modality_question(image: MedImage, modalities: Sequence[Modality], seed: int, k: int,
                      num_options: int = 4) -> Sample | None:
    """A modality-recognition question whose distractors come only from `modalities` (the modalities of
    the test set), each named by its canonical phrase: then no option text is wrong a priori and an
    image-blind ordering cannot do much better than chance (the blind bound reports how much)."""
    from medgr2_ray.data.templates import MODALITY_STEMS, render_question
    from medgr2_ray.data.vocab import display_name

    others = sorted((m for m in modalities if m != image.modality), key=lambda m: m.value)
    if image.modality not in modalities or len(others) < num_options - 1:
        return None
    rng = random.Random(f"{seed}|{image.image_id}|{k}")
    options = [display_name(m) for m in [image.modality, *rng.sample(others, num_options - 1)]]
    rng.shuffle(options)
    stem = rng.choice(MODALITY_STEMS)
    return Sample(
        sample_id=f"test-{image.image_id}-{k}", image_id=image.image_id, image_path=image.path,
        question=render_question(stem, options, inline_options=False), options=tuple(options),
        answer=display_name(image.modality),
        task_type=TaskType.MODALITY, modality=image.modality, dataset="heldout",
    )


def blind_bound(samples: Sequence[Sample]) -> float:
    """The best accuracy any fixed, image-blind preference order over option texts reaches (exact DP
    over subsets of option texts; greedy beyond 16 distinct texts)."""
    texts = sorted({o for s in samples for o in s.options})
    if not samples:
        return 0.0
    if len(texts) > 16:
        return _greedy_blind(samples, texts)
    idx = {t: i for i, t in enumerate(texts)}
    option_bits = np.array([sum(1 << idx[o] for o in s.options) for s in samples], dtype=np.int64)
    answers = np.array([idx[s.answer] for s in samples])
    n = len(texts)
    best = np.full(1 << n, -1, dtype=np.int64)
    best[0] = 0
    for placed in range(1 << n):  # placed = texts already ranked above; next text decides its questions
        if best[placed] < 0:
            continue
        undecided = (option_bits & placed) == 0
        for t in range(n):
            if placed >> t & 1:
                continue
            gain = int(np.sum(undecided & (answers == t)))
            nxt = placed | (1 << t)
            best[nxt] = max(best[nxt], best[placed] + gain)
    return float(best.max()) / len(samples)


def _greedy_blind(samples: Sequence[Sample], texts: list[str]) -> float:
    remaining, correct = list(samples), 0
    while remaining:
        gains = {t: sum(1 for s in remaining if s.answer == t) for t in texts}
        top = max(gains, key=lambda t: gains[t])
        correct += gains[top]
        remaining = [s for s in remaining if top not in s.options]
        texts.remove(top)
    return correct / len(samples)


def choose_by_likelihood(model: OptionScorer, samples: Sequence[Sample], requests: Sequence[GenerationRequest]
                         ) -> list[str]:
    """For each sample, the option whose tokens have the highest mean log-prob after its prompt."""
    flat_requests: list[GenerationRequest] = []
    flat_targets: list[tuple[int, ...]] = []
    for sample, request in zip(samples, requests, strict=True):
        for option in sample.options:
            flat_requests.append(request)
            flat_targets.append(model.target_token_ids(option))
    scores = model.score_completions(flat_requests, flat_targets, temperature=1.0)
    chosen, i = [], 0
    for sample in samples:
        means = [float(np.mean(scores[i + j])) for j in range(len(sample.options))]
        chosen.append(sample.options[int(np.argmax(means))])
        i += len(sample.options)
    return chosen


def accuracy_table(samples: Sequence[Sample], predictions: Sequence[str]) -> EvalResult:
    """Strict accuracy (a prediction must equal the answer option) overall, per modality and per task."""
    hits = [p == s.answer for s, p in zip(samples, predictions, strict=True)]

    def by(key: Callable[[Sample], str]) -> dict[str, float]:
        groups: dict[str, list[bool]] = defaultdict(list)
        for s, h in zip(samples, hits):
            groups[key(s)].append(h)
        return {k: float(np.mean(v)) for k, v in sorted(groups.items())}

    total = len(samples)
    return EvalResult(
        accuracy=float(np.mean(hits)) if total else 0.0, correct=int(sum(hits)), total=total,
        by_modality=by(lambda s: s.modality.value), by_task=by(lambda s: s.task_type.value),
        blind_bound=blind_bound(samples),
    )


def answer_agreement(samples: Sequence[Sample], images: Mapping[str, MedImage]) -> float | None:
    """Fraction of the modality questions among `samples` whose answer names the image's true modality
    (from metadata): an independent check of how faithful generated or selected data is. None when
    there is no such question."""
    from medgr2_ray.data.vocab import modality_from_text

    checkable = [s for s in samples if s.task_type == TaskType.MODALITY and s.image_id in images]
    if not checkable:
        return None
    return float(np.mean([modality_from_text(s.answer) == images[s.image_id].modality for s in checkable]))
