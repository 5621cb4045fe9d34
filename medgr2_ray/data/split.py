"""Leakage-free train/test splits: whole studies go to one side, never slices of one study to both.

Studies are grouped by modality first, so each modality with at least two studies has studies on both
sides (a modality with a single study stays in train: it cannot be split without leaking).
With few studies, which one is held out matters more than the seed should: holding out a study that
holds most of a modality's images leaves training one small, unlike picture (the seed pool's fundus:
a 19-image colour photograph vs a 102-pixel grey patch). So a study may go to test only while the
modality keeps at least `min_train_share` of its images in train; when no study qualifies the
smallest is held out. Deterministic given the seed, and independent of the input order.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from medgr2_ray.types import MedImage


def split_by_study(images: Sequence[MedImage], test_fraction: float, seed: int, min_train_share: float = 0.5,
                   ) -> tuple[list[MedImage], list[MedImage]]:
    """Split images into (train, test) by `study_id`, stratified by modality.

    Per modality, round(test_fraction * n_studies) studies (at least 1 when there are >= 2 studies,
    never all of them) go to test, drawn in seeded order among those whose removal keeps at least
    `min_train_share` of the modality's images in train. A study that spans modalities is assigned by
    its most frequent one. Both lists keep the input's relative order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"split_by_study: test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= min_train_share < 1.0:
        raise ValueError(f"split_by_study: min_train_share must be in [0, 1), got {min_train_share}")
    modality_counts: dict[str, Counter] = defaultdict(Counter)
    for image in images:
        modality_counts[image.study_id][image.modality.value] += 1
    sizes = {study: sum(counts.values()) for study, counts in modality_counts.items()}
    studies_by_modality: dict[str, list[str]] = defaultdict(list)
    for study, counts in modality_counts.items():
        # ties broken by name so the assignment does not depend on input order
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        studies_by_modality[top].append(study)
    rng = random.Random(seed)
    test_studies: set[str] = set()
    for modality in sorted(studies_by_modality):
        studies = sorted(studies_by_modality[modality])
        if len(studies) < 2:
            continue
        rng.shuffle(studies)
        n_test = min(len(studies) - 1, max(1, round(test_fraction * len(studies))))
        test_studies.update(_pick_test(studies, sizes, n_test, min_train_share))
    train = [i for i in images if i.study_id not in test_studies]
    test = [i for i in images if i.study_id in test_studies]
    return train, test


def _pick_test(studies: list[str], sizes: dict[str, int], n_test: int, min_train_share: float) -> list[str]:
    """The first `n_test` of the (shuffled) studies that keep train at `min_train_share` of the images;
    when too few qualify, the smallest remaining studies fill up (stable, so still seed-determined)."""
    total, held, picked = sum(sizes[s] for s in studies), 0, []
    for study in studies:
        if len(picked) < n_test and total - held - sizes[study] >= min_train_share * total:
            picked.append(study)
            held += sizes[study]
    for study in sorted((s for s in studies if s not in picked), key=lambda s: sizes[s]):
        if len(picked) >= n_test:
            break
        picked.append(study)
    return picked
