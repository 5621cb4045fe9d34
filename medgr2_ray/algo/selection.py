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

`StreamingSelector` is the flywheel's version of the same rule: candidates arrive a few at a time and
are decided at once, forever (see its docstring). The rounds use `select_samples`, unchanged.
Pure Python: no Ray, no models.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import random
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medgr2_ray.algo.contamination import GUARD_REASONS, ContaminationGuard
from medgr2_ray.algo.rewards import normalize_text
from medgr2_ray.config import SelectionConfig
from medgr2_ray.data.images import ImageLookup
from medgr2_ray.types import Sample

BATCH_REASONS = ("duplicate_id", "unscored", "below_tau", "near_duplicate", "over_top_k")
# The streaming selector's reasons, in the order its checks run.
STREAM_REASONS = ("duplicate_id", *GUARD_REASONS, "unscored", "below_tau", "below_rank", "random_drop",
                  "over_quota", "near_duplicate")
REASONS = BATCH_REASONS + tuple(r for r in STREAM_REASONS if r not in BATCH_REASONS)


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
        out = {"kept": len(self.kept)} | {r: 0 for r in BATCH_REASONS}
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


# ---------------------------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class Decision:
    """The streaming selector's verdict on one candidate: the sample (provenance.selected and .reason
    set), whether it was kept, and why not (one of STREAM_REASONS) with a human-readable detail."""

    sample: Sample
    kept: bool
    reason: str | None
    detail: str = ""


def _bucket(sample: Sample) -> str:
    return f"{sample.modality.value}|{sample.task_type.value}"


def _coin(seed: int, sample_id: str) -> float:
    """A seeded uniform draw in [0, 1) per sample id: order-free and stateless, so a restored selector
    draws the same coins without any RNG state."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _similar(text: str, other: str, threshold: float) -> float | None:
    """difflib's ratio of two normalised texts when it reaches `threshold`, else None. The two quick
    ratios are upper bounds of `ratio`, so skipping on them never changes the answer, only the cost."""
    matcher = difflib.SequenceMatcher(None, text, other)
    if matcher.real_quick_ratio() < threshold or matcher.quick_ratio() < threshold:
        return None
    ratio = matcher.ratio()
    return ratio if ratio >= threshold else None


class StreamingSelector:
    """Decides each candidate when it arrives, once and forever, with state that survives a restart.

    Checks, in order (the first that fails is the reason):
      1. `duplicate_id`: the id was offered before (kept or not), ever;
      2. the contamination guard, when one is given: `heldout_image`, `heldout_near_duplicate`,
         `test_question` (algo/contamination.py);
      3. reward mode only: `unscored` (no finite reward), then `below_tau` (reward <= tau);
      4. the ranking cut, reward mode with `keep_fraction` set (the streaming top-K): every scored
         candidate that got past 1-2 (below tau or not) enters a window of the last `window` such
         rewards; a candidate is kept only if its rank there, itself included, is at most
         ceil(keep_fraction * len(window)) (`below_rank`). Rank = 1 + the window entries with a higher
         reward, or the same reward and a smaller id (the batch rule's order: reward, then id).
         Random mode ignores rewards instead: a seeded coin per sample id keeps it with probability
         keep_fraction (1.0 when unset) (`random_drop`);
      5. balance quotas, when `balance` is on (`over_quota`). Over the last `window` decisions (every
         offered candidate is one), let K be the kept ones, k_b those of this candidate's (modality,
         task type) bucket, and A the buckets with an *eligible* candidate (one that passed 1-4) there,
         plus this candidate's. It is kept only if k_b + 1 <= ceil(quota_slack * (K + 1) / |A|):
         with it, its bucket holds at most quota_slack times an equal share of the kept samples. A
         bucket alone (|A| = 1) is never limited, and every bucket may keep at least one per window,
         so none is starved; buckets whose candidates all fail 1-4 claim no share;
      6. `near_duplicate`: its normalised question is at least `dedup_threshold` similar to a question
         kept so far on the same image (ever; kept questions are indexed by image id).
    Decisions depend only on the offers so far and the seed: `state_dict()` captures everything, and a
    selector restored with `load_state_dict` decides the next offers exactly as the uninterrupted one.
    """

    STATE_VERSION = 1

    def __init__(self, cfg: SelectionConfig, seed: int, guard: ContaminationGuard | None = None) -> None:
        self.cfg, self.seed, self.guard = cfg, seed, guard
        self._offered: set[str] = set()
        self._ranked: deque[tuple[float, str]] = deque(maxlen=cfg.window)  # (reward, id) of the last scored
        self._recent: deque[tuple[str, bool, bool]] = deque(maxlen=cfg.window)  # (bucket, eligible, kept)
        self._kept_questions: dict[str, list[tuple[str, str]]] = defaultdict(list)  # image -> (id, question)
        self._counts: Counter[str] = Counter()

    @property
    def kept_count(self) -> int:
        """Candidates kept so far."""
        return self._counts["kept"]

    def counts(self) -> dict[str, int]:
        """How many were kept and how many were rejected for each reason, since the start."""
        return {"kept": self._counts["kept"]} | {r: self._counts[r] for r in STREAM_REASONS}

    def offer(self, candidates: Sequence[Sample], lookup: ImageLookup | None = None) -> list[Decision]:
        """Decide these candidates, in input order (`lookup` gives pixels to the contamination guard)."""
        decisions = [self._decide(sample, lookup) for sample in candidates]
        # The invariant that makes selection auditable: every candidate kept, or rejected with a reason.
        assert len(decisions) == len(candidates)
        assert all(d.reason is None if d.kept else d.reason in STREAM_REASONS for d in decisions)
        return decisions

    def _decide(self, sample: Sample, lookup: ImageLookup | None) -> Decision:
        rejection = self._screen(sample, lookup)
        eligible = rejection is None
        if rejection is None:
            rejection = self._over_quota(sample) or self._near_duplicate(sample)
        kept = rejection is None
        self._offered.add(sample.sample_id)
        self._recent.append((_bucket(sample), eligible, kept))
        if rejection is None:
            self._kept_questions[sample.image_id].append((sample.sample_id, normalize_text(sample.question)))
            self._counts["kept"] += 1
            return Decision(sample.with_provenance(selected=True, reason=None), True, None)
        reason, detail = rejection
        self._counts[reason] += 1
        return Decision(sample.with_provenance(selected=False, reason=reason), False, reason, detail)

    def _screen(self, sample: Sample, lookup: ImageLookup | None) -> tuple[str, str] | None:
        """Checks 1-4 (see the class docstring)."""
        if sample.sample_id in self._offered:
            return "duplicate_id", "an earlier candidate had the same id"
        if self.guard is not None and (hit := self.guard.check(sample, lookup)) is not None:
            return hit.reason, hit.detail
        if self.cfg.mode == "random":
            p = 1.0 if self.cfg.keep_fraction is None else self.cfg.keep_fraction
            coin = _coin(self.seed, sample.sample_id)
            return None if coin < p else ("random_drop", f"coin {coin:.3f} >= keep probability {p}")
        reward = sample.provenance.reward
        if reward is None or not math.isfinite(reward):
            return "unscored", f"reward is {reward!r}; score it with the reward model first"
        if self.cfg.keep_fraction is not None:
            self._ranked.append((float(reward), sample.sample_id))
        if self.cfg.tau is not None and reward <= self.cfg.tau:
            return "below_tau", f"reward {reward:.3f} <= tau {self.cfg.tau}"
        if self.cfg.keep_fraction is not None:
            rank = 1 + sum(1 for r, i in self._ranked if r > reward or (r == reward and i < sample.sample_id))
            cutoff = math.ceil(self.cfg.keep_fraction * len(self._ranked) - 1e-9)
            if rank > cutoff:
                return "below_rank", (f"reward {reward:.3f} ranks {rank} of the last {len(self._ranked)} scored; "
                                      f"keep_fraction {self.cfg.keep_fraction} keeps the best {cutoff}")
        return None

    def _over_quota(self, sample: Sample) -> tuple[str, str] | None:
        """Check 5: the bucket's share of the kept samples among the last `window` decisions."""
        if not self.cfg.balance:
            return None
        bucket = _bucket(sample)
        active = {b for b, eligible, _ in self._recent if eligible} | {bucket}
        kept_total = sum(1 for _, _, kept in self._recent if kept)
        kept_here = sum(1 for b, _, kept in self._recent if kept and b == bucket)
        # minus a hair so that float noise in slack * (K + 1) / |A| never lifts an exact integer cap
        cap = math.ceil(self.cfg.quota_slack * (kept_total + 1) / len(active) - 1e-9)
        if kept_here + 1 <= cap:
            return None
        return "over_quota", (f"bucket {bucket} holds {kept_here} of the {kept_total} kept among the last "
                              f"{len(self._recent)} decisions; its cap with {len(active)} active buckets is {cap}")

    def _near_duplicate(self, sample: Sample) -> tuple[str, str] | None:
        """Check 6: against every question kept so far on the same image."""
        text = normalize_text(sample.question)
        for other_id, other in self._kept_questions.get(sample.image_id, ()):
            ratio = _similar(text, other, self.cfg.dedup_threshold)
            if ratio is not None:
                return "near_duplicate", f"question {ratio:.3f} similar to kept sample {other_id}"
        return None

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything the next decisions depend on, as JSON-able data (the guard is rebuilt, not saved:
        it depends only on the held-out set)."""
        return {
            "version": self.STATE_VERSION, "seed": self.seed, "config": self.cfg.model_dump(mode="json"),
            "offered": sorted(self._offered),
            "ranked": [[r, i] for r, i in self._ranked],
            "recent": [[b, e, k] for b, e, k in self._recent],
            "kept_questions": {img: [[i, q] for i, q in qs] for img, qs in sorted(self._kept_questions.items())},
            "counts": dict(sorted(self._counts.items())),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`; refuses a state made with another version, seed or config."""
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"selector state: version {state.get('version')!r}, this code reads "
                             f"{self.STATE_VERSION}; start the kept store over")
        if state.get("seed") != self.seed:
            raise ValueError(f"selector state: saved with seed {state.get('seed')!r}, this selector has {self.seed}")
        saved, current = state.get("config", {}), self.cfg.model_dump(mode="json")
        differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differing:
            raise ValueError("selector state: saved under another selection config, differing in "
                             + ", ".join(f"selection.{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in differing))
        self._offered = set(state["offered"])
        self._ranked = deque(((float(r), str(i)) for r, i in state["ranked"]), maxlen=self.cfg.window)
        self._recent = deque(((str(b), bool(e), bool(k)) for b, e, k in state["recent"]), maxlen=self.cfg.window)
        self._kept_questions = defaultdict(list, {img: [(str(i), str(q)) for i, q in qs]
                                                  for img, qs in state["kept_questions"].items()})
        self._counts = Counter({k: int(v) for k, v in state["counts"].items()})
