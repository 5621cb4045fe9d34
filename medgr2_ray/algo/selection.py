"""Choosing which generated samples the solver learns from (MedGR²'s selection step).

The paper's finding is that *which* samples matter more than how many: the top 2k by reward-model
score beat 11k random ones. Selection here, in order:
  1. duplicate sample ids are refused (a sample must never be trained on twice);
  2. reward mode: samples without a reward-model score are refused ("unscored"), and those scoring at or
     below `tau` ("below_tau");
  3. near-duplicate questions on the same image are removed, keeping the better-scored one;
  4. at most `top_k` are kept, the best first, taken round-robin over (modality, task type) buckets
     when `balance` is on so that no bucket crowds the others out.
`mode="random"` is the ablation: it skips the score filter and ranks by a seeded shuffle instead.
Every input sample ends up either kept or rejected with its reason: nothing disappears silently.
Pure Python: no Ray, no models.
"""

from __future__ import annotations

import difflib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from medgr2_ray.algo.rewards import normalize_text
from medgr2_ray.config import SelectionConfig
from medgr2_ray.types import Sample

REASONS = ("duplicate_id", "unscored", "below_tau", "near_duplicate", "over_top_k")


@dataclass(frozen=True)
class Rejection:
    """A sample selection did not keep, and why."""

    sample: Sample
    reason: str  # one of REASONS
    detail: str = ""


@dataclass(frozen=True)
class SelectionResult:
    """Kept samples (provenance.selected=True, best first) and rejected ones with reasons."""

    kept: tuple[Sample, ...]
    rejected: tuple[Rejection, ...]

    def counts(self) -> dict[str, int]:
        """How many were kept and how many were rejected for each reason (for logs and reports)."""
        out = {"kept": len(self.kept)} | {r: 0 for r in REASONS}
        out.update(Counter(r.reason for r in self.rejected))
        return out


def question_similarity(a: Sample, b: Sample) -> float:
    """Similarity in [0, 1] of two samples' normalised questions (difflib's ratio)."""
    return difflib.SequenceMatcher(None, normalize_text(a.question), normalize_text(b.question)).ratio()


def _rank(samples: list[Sample], cfg: SelectionConfig, seed: int) -> list[Sample]:
    """Best first: by reward (ties by id, so the order never depends on input order) or a seeded shuffle."""
    ordered = sorted(samples, key=lambda s: s.sample_id)
    if cfg.mode == "random":
        random.Random(seed).shuffle(ordered)
        return ordered
    return sorted(ordered, key=lambda s: -float(s.provenance.reward))  # type: ignore[arg-type]


def _screen(samples: Sequence[Sample], cfg: SelectionConfig) -> tuple[list[Sample], list[Rejection]]:
    """Steps 1-2: duplicate ids, missing scores and the tau threshold."""
    seen: set[str] = set()
    passed: list[Sample] = []
    rejected: list[Rejection] = []
    for s in samples:
        reward = s.provenance.reward
        if s.sample_id in seen:
            rejected.append(Rejection(s, "duplicate_id", "an earlier sample has the same id"))
        elif cfg.mode == "reward" and (reward is None or not math.isfinite(reward)):
            rejected.append(Rejection(s, "unscored", f"reward is {reward!r}; score it with the reward model first"))
        elif cfg.mode == "reward" and cfg.tau is not None and reward <= cfg.tau:  # type: ignore[operator]
            rejected.append(Rejection(s, "below_tau", f"reward {reward:.3f} <= tau {cfg.tau}"))
        else:
            passed.append(s)
        seen.add(s.sample_id)
    return passed, rejected


def _dedup(ranked: list[Sample], threshold: float) -> tuple[list[Sample], list[Rejection]]:
    """Step 3: greedily keep the best of each cluster of similar questions on one image."""
    kept_by_image: dict[str, list[Sample]] = defaultdict(list)
    kept: list[Sample] = []
    rejected: list[Rejection] = []
    for s in ranked:
        twin = next((k for k in kept_by_image[s.image_id] if question_similarity(s, k) >= threshold), None)
        if twin is None:
            kept_by_image[s.image_id].append(s)
            kept.append(s)
        else:
            rejected.append(Rejection(s, "near_duplicate", f"question similar to kept sample {twin.sample_id}"))
    return kept, rejected


def _balanced_order(ranked: list[Sample]) -> list[Sample]:
    """Round-robin over (modality, task type) buckets; within a round, better samples first."""
    buckets: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in ranked:
        buckets[(s.modality.value, s.task_type.value)].append(s)
    position = {s.sample_id: i for i, s in enumerate(ranked)}
    out: list[Sample] = []
    depth = 0
    while len(out) < len(ranked):
        layer = [b[depth] for b in buckets.values() if depth < len(b)]
        out.extend(sorted(layer, key=lambda s: position[s.sample_id]))
        depth += 1
    return out


def select_samples(samples: Sequence[Sample], cfg: SelectionConfig, seed: int) -> SelectionResult:
    """Keep the best, diverse, non-duplicate samples; see the module docstring for the steps."""
    passed, rejected = _screen(samples, cfg)
    unique, near_dups = _dedup(_rank(passed, cfg, seed), cfg.dedup_threshold)
    rejected += near_dups
    order = _balanced_order(unique) if cfg.balance else unique
    cap = len(order) if cfg.top_k is None else cfg.top_k
    chosen, over = order[:cap], order[cap:]
    rejected += [Rejection(s, "over_top_k", f"top_k={cfg.top_k}") for s in over]
    kept = tuple(s.with_provenance(selected=True) for s in chosen)
    result = SelectionResult(kept=kept, rejected=tuple(
        Rejection(r.sample.with_provenance(selected=False, reason=r.reason), r.reason, r.detail)
        for r in rejected))
    # The invariant that makes selection auditable: every input is accounted for exactly once.
    assert len(result.kept) + len(result.rejected) == len(samples)
    return result
