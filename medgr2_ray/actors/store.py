"""KeptStore: the kept-sample store between the scorer pool and the learners (one named actor per run).

Every scorer call's `ScoredCandidates` is offered here. The store decides each candidate once: too stale
(its G or R version lags the newest by more than the bound), then selection — streaming (tau, the
top-fraction of a sliding window, balanced quotas, near-duplicates against everything kept, the
contamination guard) in the continuous mode, or the paper's batch selection over a whole round at the
round's barrier (`close_round`). Kept samples form an append-only list; learners pull training batches
from it (`batch`, reproducible from its `BatchSpec`), mixed with the template seeds.

Nothing is lost or counted twice. A request id is accepted once per run (a re-issued chain's second
offer is refused as a whole), every candidate ends kept or rejected with a reason, and every accepted
offer is appended to `offers.jsonl` before the receipt goes out. A store that dies is restarted by Ray
and replays that log through a fresh selector (selection is deterministic), so it comes back exactly as
it was; offers in flight when it died fail at the controller, which re-issues them.
Files (under `data/`): `stream/` in the continuous mode, `round_k/` per round in the rounds mode, each
with `offers.jsonl` (the log), `samples.jsonl` (every candidate with its decision), `kept.jsonl`,
`failures.jsonl`; a round also gets `summary.json`; `draws.jsonl` records which samples the learners'
batches drew. A `--resume` of a continuous run (`resume_stream`) replays the stream's log as a restart does.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.actors.info import actor_info
from medgr2_ray.algo.admission import too_stale
from medgr2_ray.algo.batches import balanced_weights, batch_indices, sample_batch
from medgr2_ray.algo.contamination import build_guard
from medgr2_ray.algo.selection import StreamingSelector, select_samples
from medgr2_ray.config import SelectionConfig
from medgr2_ray.data.images import ImageCache
from medgr2_ray.data.store import read_samples, sample_from_dict, sample_to_dict, write_samples
from medgr2_ray.eval.protocols import answer_agreement
from medgr2_ray.metrics import CANDIDATES, GENERATOR_LAG, KEPT, REWARD_LAG, Metrics
from medgr2_ray.messages import (ActorInfo, BatchSpec, OfferReceipt, SampleSource, ScoredCandidates, StoreStatus,
                                 Versions)
from medgr2_ray.types import MedImage, Sample


LOGS = ("offers.jsonl", "samples.jsonl", "kept.jsonl", "failures.jsonl")  # a segment's files (offers first)
DRAWS = "draws.jsonl"  # which kept samples each learner's batches drew (GRPO takes questions P's SFT did not)


@dataclass(frozen=True)
class StoreSpec:
    """Everything the store needs, in one typed message."""

    out_dir: str  # the run's data/ directory
    seeds: tuple[Sample, ...]
    selection: SelectionConfig
    seed: int
    rounds: bool  # True: batch selection at round barriers (the paper's algorithm)
    pool: dict[str, MedImage] = field(default_factory=dict)  # image records (for the right-answer share)
    images: dict[str, Any] = field(default_factory=dict)  # image id -> pixels ref (the contamination guard)
    heldout_images: tuple[str, ...] = ()  # ids of held-out images (their pixels are in `images`)
    test_samples: tuple[Sample, ...] = ()  # the held-out questions (no generated question may repeat one)
    generator_staleness: int = 1
    reward_staleness: int = 1
    resume_rounds: int = 0  # rounds mode, --resume: rounds 1..n are complete; their kept samples come back
    resume_stream: bool = False  # continuous mode, --resume: replay the stream's offers log (as after a restart)


class KeptStore:
    """Kept samples and the decisions that made them (see the module docstring)."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self.started = time.time()
        self.images = ImageCache(refs=spec.images, resolve=ray.get)
        self.guard = build_guard(spec.selection, spec.heldout_images, self.images, spec.test_samples)
        self.selector = StreamingSelector(spec.selection, spec.seed, self.guard) if not spec.rounds else None
        self.kept: list[Sample] = []
        self.requests: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.round = 0
        self.pending: list[Sample] = []  # the open round's candidates (rounds mode)
        self.drawn: dict[str, set[str]] = {}
        self.metrics = Metrics()
        self._segment = self._segment_dir()
        self._replay()

    def ready(self) -> ActorInfo:
        """Liveness probe (resolves once the log is replayed)."""
        return actor_info(len(self.kept))

    # ------------------------------------------------------------ files
    def _segment_dir(self) -> Path:
        """This segment's directory (`stream/` or `round_k/`) with its logs present, empty when new."""
        name = f"round_{self.round}" if self.spec.rounds else "stream"
        path = Path(self.spec.out_dir) / name
        path.mkdir(parents=True, exist_ok=True)
        for log in LOGS:  # created, never touched: a resume leaves finished rounds' files as they were
            if not (path / log).exists():
                (path / log).touch()
        return path

    def _append(self, name: str, lines: Sequence[str]) -> None:
        if not lines:
            return
        with (self._segment / name).open("a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()

    def _replay(self) -> None:
        """Rebuild the state from the logs a previous incarnation of this actor wrote (none when fresh):
        closed rounds from their kept.jsonl, the open round or the stream from its offers log."""
        state = Path(self.spec.out_dir) / "store_state.json"
        if not actor_info(0).restarted and self.spec.resume_rounds:
            for k in range(1, self.spec.resume_rounds + 1):
                self.kept.extend(read_samples(Path(self.spec.out_dir) / f"round_{k}" / "kept.jsonl"))
            self.counts["kept"] = len(self.kept)
            self.round = self.spec.resume_rounds
            state.write_text(json.dumps({"round": self.round}))
            return
        draws = Path(self.spec.out_dir) / DRAWS
        if not actor_info(0).restarted and not self.spec.resume_stream:
            state.write_text(json.dumps({"round": 0}))
            for name in LOGS:
                (self._segment / name).write_text("")
            draws.write_text("")
            return
        for line in draws.read_text().splitlines() if draws.is_file() else []:
            record = json.loads(line)
            self.drawn.setdefault(record["salt"], set()).update(record["ids"])
        if self.spec.rounds:
            self.round = int(json.loads(state.read_text())["round"])
            for k in range(1, self.round + 1):  # closed rounds (a summary is written last) give their kept
                closed = Path(self.spec.out_dir) / f"round_{k}"
                if (closed / "summary.json").is_file():
                    self.kept.extend(read_samples(closed / "kept.jsonl"))
            self.counts["kept"] = len(self.kept)
            self._segment = self._segment_dir()
            if (self._segment / "summary.json").is_file():
                return  # the last round opened was closed too: nothing is pending
        log = self._segment / "offers.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        for name in LOGS[1:]:
            (self._segment / name).write_text("")
        for record in records:
            scored = ScoredCandidates(tuple(record["request_ids"]),
                                      tuple(sample_from_dict(d) for d in record["samples"]),
                                      tuple((r, t) for r, t in record["failures"]), int(record["duplicates"]),
                                      int(record["rm_version"]))
            self._decide(scored, Versions(**record["versions"]), log_offer=False)

    # ------------------------------------------------------------ offers
    def offer(self, scored: ScoredCandidates, versions: Versions) -> OfferReceipt:
        """Decide every candidate of one scorer call (see the module docstring)."""
        if any(r in self.requests for r in scored.request_ids):
            return OfferReceipt(scored.request_ids, False, 0, 0, 0, {}, len(self.kept))
        return self._decide(scored, versions, log_offer=True)

    def _decide(self, scored: ScoredCandidates, versions: Versions, log_offer: bool) -> OfferReceipt:
        if log_offer:
            self._append("offers.jsonl", [json.dumps({
                "request_ids": list(scored.request_ids), "samples": [sample_to_dict(s) for s in scored.samples],
                "failures": [list(f) for f in scored.failures], "duplicates": scored.duplicates,
                "rm_version": scored.rm_version, "versions": versions.__dict__}, allow_nan=False)])
        self.requests.update(scored.request_ids)
        fresh, stale = self._staleness(scored.samples, versions)
        if self.selector is None:  # rounds: the guard now, the rest together at the barrier
            leaks = [self._leak(s) for s in fresh]
            self.pending.extend(s for s, leak in zip(fresh, leaks) if leak is None)
            decided, kept = stale + [leak for leak in leaks if leak is not None], []
        else:
            decisions = self.selector.offer(fresh, self.images)
            decided = stale + [d.sample for d in decisions]
            kept = [d.sample for d in decisions if d.kept]
        self.kept.extend(kept)
        rejected = Counter(s.provenance.reason for s in decided if s.provenance.selected is False)
        self.counts.update({"candidates": len(scored.samples), "unparseable": len(scored.failures),
                            "kept": len(kept), **{f"rejected:{k}": v for k, v in rejected.items()}})
        self._append("failures.jsonl", [json.dumps({"reason": r, "text": t}) for r, t in scored.failures])
        self._append("samples.jsonl", [json.dumps(sample_to_dict(s)) for s in decided])
        self._append("kept.jsonl", [json.dumps(sample_to_dict(s)) for s in kept])
        g_lag = [versions.generator - s.provenance.model_version for s in scored.samples]
        r_lag = [versions.reward_model - s.provenance.rm_version for s in scored.samples]
        for lag in g_lag:
            self.metrics.record(GENERATOR_LAG, lag)
        for lag in r_lag:
            self.metrics.record(REWARD_LAG, lag)
        self.metrics.record(CANDIDATES, len(scored.samples))
        self.metrics.record(KEPT, len(kept))
        return OfferReceipt(scored.request_ids, True, len(scored.samples), len(kept), len(scored.failures),
                            dict(rejected), len(self.kept), scored.duplicates,
                            sum(g_lag) / len(g_lag) if g_lag else 0.0, sum(r_lag) / len(r_lag) if r_lag else 0.0)

    def _leak(self, sample: Sample) -> Sample | None:
        """The sample rejected with the contamination guard's reason, or None when it leaks nothing."""
        hit = self.guard.check(sample, self.images) if self.guard is not None else None
        return None if hit is None else sample.with_provenance(selected=False, reason=hit.reason)

    def _staleness(self, samples: Sequence[Sample], versions: Versions) -> tuple[list[Sample], list[Sample]]:
        """Split off candidates whose G or R version lags the newest beyond its bound (decided: rejected)."""
        fresh, stale = [], []
        for s in samples:
            if too_stale(versions.generator, s.provenance.model_version, self.spec.generator_staleness):
                stale.append(s.with_provenance(selected=False, reason="stale_generator"))
            elif too_stale(versions.reward_model, s.provenance.rm_version, self.spec.reward_staleness):
                stale.append(s.with_provenance(selected=False, reason="stale_reward"))
            else:
                fresh.append(s)
        return fresh, stale

    # ------------------------------------------------------------ rounds
    def close_round(self, k: int) -> dict[str, Any]:
        """The round's barrier: batch selection over all its candidates, the round's files, its summary."""
        if self.selector is not None:
            raise RuntimeError("close_round is for the rounds mode (cycle.mode=rounds)")
        candidates = sorted(self.pending, key=lambda s: s.sample_id)
        selection = select_samples(candidates, self.spec.selection, self.spec.seed + k)
        reasons = {r.sample.sample_id: r for r in selection.rejected}
        decided = [s.with_provenance(selected=s.sample_id not in reasons,
                                     reason=reasons[s.sample_id].reason if s.sample_id in reasons else None)
                   for s in candidates]
        start = len(self.kept)
        self.kept.extend(selection.kept)
        self.counts["kept"] += len(selection.kept)
        write_samples(self._segment / "samples.jsonl", decided)
        write_samples(self._segment / "kept.jsonl", list(selection.kept))
        summary = self._round_summary(k, candidates, selection, start)
        (self._segment / "summary.json").write_text(json.dumps(summary, indent=1))
        self.pending = []
        return summary

    def _round_summary(self, k: int, candidates: list[Sample], selection: Any, start: int) -> dict[str, Any]:
        rewards = [s.provenance.reward for s in candidates if s.provenance.reward is not None]
        kept_rewards = [s.provenance.reward for s in selection.kept if s.provenance.reward is not None]
        failures = (self._segment / "failures.jsonl")
        unparseable = len(failures.read_text().splitlines()) if failures.is_file() else 0
        return {"round": k, "samples": len(candidates), "unparseable": unparseable, "kept": len(selection.kept),
                "kept_from": start, "kept_to": len(self.kept), "rejected": dict(selection.counts()),
                "reward_mean": sum(rewards) / len(rewards) if rewards else None,
                "kept_reward_mean": sum(kept_rewards) / len(kept_rewards) if kept_rewards else None,
                "kept_answer_correct": answer_agreement(selection.kept, self.spec.pool)}

    def open_round(self, k: int) -> int:
        """Start round k's files (rounds mode); returns the kept count so far."""
        self.round = k
        (Path(self.spec.out_dir) / "store_state.json").write_text(json.dumps({"round": k}))
        # A round redone after a crash starts from an empty directory: nothing is appended to, and no
        # file of the interrupted attempt survives beside the new ones.
        shutil.rmtree(Path(self.spec.out_dir) / f"round_{k}", ignore_errors=True)
        self._segment = self._segment_dir()
        return len(self.kept)

    # ------------------------------------------------------------ learners
    def batch(self, spec: BatchSpec) -> list[Sample]:
        """The samples of one training step (see `BatchSpec`); the same spec always draws the same batch."""
        kept = self.kept[spec.kept_from:spec.kept_to] if spec.source is not SampleSource.SEEDS else []
        seeds = list(self.spec.seeds) if spec.source is not SampleSource.KEPT else []
        if spec.seed_share is not None and seeds and kept:
            n_seeds = round(spec.size * spec.seed_share)
            chosen = (sample_batch(seeds, n_seeds, self.spec.seed, f"{spec.salt}|seeds", spec.step)
                      + sample_batch(kept, spec.size - n_seeds, self.spec.seed, f"{spec.salt}|kept", spec.step))
        elif spec.balanced:
            items = seeds + kept
            weights = balanced_weights([s.modality.value for s in items])
            chosen = [items[i] for i in batch_indices(weights, spec.size, self.spec.seed, spec.step, spec.salt)]
        else:
            chosen = sample_batch(seeds + kept, spec.size, self.spec.seed, spec.salt, spec.step)
        fresh = sorted({s.sample_id for s in chosen} - self.drawn.get(spec.salt, set()))
        if fresh:  # logged, so a restarted or resumed store still knows what P's SFT trained on
            with (Path(self.spec.out_dir) / DRAWS).open("a", encoding="utf-8") as f:
                f.write(json.dumps({"salt": spec.salt, "ids": fresh}) + "\n")
        self.drawn.setdefault(spec.salt, set()).update(fresh)
        return chosen

    def accepted_ids(self) -> list[str]:
        """Every request id an accepted offer answered (a resumed stream does not generate them again)."""
        return sorted(self.requests)

    def kept_samples(self, start: int = 0, exclude_drawn_by: str | None = None) -> list[Sample]:
        """Kept samples from index `start`, less those a learner's batches drew (GRPO wants fresh questions)."""
        drawn = self.drawn.get(exclude_drawn_by or "", set())
        return [s for s in self.kept[start:] if s.sample_id not in drawn]

    def status(self) -> StoreStatus:
        """Counters so far."""
        rejected = {k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("rejected:")}
        return StoreStatus(self.counts["candidates"], len(self.kept), self.counts["unparseable"], rejected,
                           len(self.spec.seeds), time.time() - self.started)
