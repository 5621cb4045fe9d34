"""Which examples each training step draws: seeded, so a redone or resumed step draws the same batch.

Every learner of the cycle (G, R and the solver P) trains on batches drawn here. A batch depends only
on (seed, a salt naming the learner and stage, step) and the items it draws from, never on wall-clock
order, so a learner restarted from a checkpoint redoes its lost steps on exactly the batches it lost.
Pure Python: no Ray, no models.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def balanced_weights(groups: Sequence[str]) -> list[float]:
    """Sampling weights that give every group (e.g. modality) the same share of the batches (the pool is
    dominated by a few large studies; unweighted sampling teaches the solver a prior, not the images)."""
    counts = Counter(groups)
    raw = [1.0 / counts[g] for g in groups]
    total = sum(raw)
    return [w / total for w in raw]


def batch_indices(weights: Sequence[float], batch: int, seed: int, step: int, salt: str = "sft") -> list[int]:
    """The global batch of one step, drawn with replacement by `weights`: depends only on (seed, salt, step)."""
    rng = random.Random(f"{seed}|{salt}|{step}")
    return rng.choices(range(len(weights)), weights=weights, k=batch)


def sample_batch(items: Sequence[T], size: int, seed: int, salt: str, step: int) -> list[T]:
    """`size` distinct items (all of them when fewer), drawn uniformly for (seed, salt, step)."""
    if not items:
        return []
    rng = random.Random(f"{seed}|{salt}|{step}")
    return rng.sample(list(items), min(size, len(items)))
