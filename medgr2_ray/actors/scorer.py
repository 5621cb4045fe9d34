"""ScorerActor: batched reward-model inference that turns rollouts into scored groups.

For each completion a' of a question q about image x, MedGR²'s GRPO reward is
`alpha * norm(R(x, q, a')) + beta * 1[extract(a') == answer]` (`algo.rewards.combined_reward`; the
rule-based term is `reward.rule`, accuracy unless a user names their own function). R reads
the sample rendered with a' as its answer (`prompts.reward_prompt`), all completions of a call in
micro-batches. With `reward.alpha == 0` R cannot change any reward, so no reward model is loaded (the
accuracy-only ablation, and CPU tests). A completion R cannot score (NaN) or a request without a sample
when accuracy is weighted gets a NaN reward: the learner drops such groups and counts them, so one bad
sample never kills the run. A call may carry R's newest published `WeightVersion`; the scorer loads it
first when it is newer, so every score records the R version that gave it.

`score_candidates` is the data side's half: it turns one generator call's rollouts into samples
(`algo.requests.parse_candidates`, failures kept with reasons) and scores each with R, for the kept-sample
store to decide. Requests and samples name their images by id; the scorer reads the pixels from its own
image cache (put in the object store once by the driver).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray

from medgr2_ray.actors.info import actor_info, flush_spans, limit_threads, record_span
from medgr2_ray.messages import ActorInfo, ScoredCandidates
from medgr2_ray.algo.rewards import extract_answer, normalize_rm_score, rule_reward
from medgr2_ray.algo.requests import CandidateMeta, parse_candidates, resolve_images, reward_request
from medgr2_ray.config import ModelConfig, RewardConfig
from medgr2_ray.data.images import ImageCache
from medgr2_ray.metrics import REWARD_MEAN, SAMPLES_SCORED, WEIGHT_VERSION, Metrics
from medgr2_ray.prompts import reward_prompt
from medgr2_ray.sync.weights import fetch_weights
from medgr2_ray.types import FlatWeights, GenerationRequest, RewardObjective, Rollout, ScoredGroup, WeightVersion


def reward_model_request(request: GenerationRequest, rollout: Rollout) -> GenerationRequest | None:
    """What R reads for one completion: the request's sample with the completion's answer, or None
    when the request carries no sample to render."""
    if request.sample is None:
        return None
    answer = extract_answer(rollout.text, request.sample.options) or rollout.text.strip()
    sample = replace(request.sample, answer=answer)
    return GenerationRequest(f"rm:{rollout.request_id}:{rollout.index}", reward_prompt(sample), request.images,
                             sample=sample)


def group_rollouts(requests: Sequence[GenerationRequest], rollouts: Sequence[Rollout]) -> list[tuple[Rollout, ...]]:
    """Rollouts of each request, in request order (a request with no rollouts is an error: it was lost)."""
    by_id: dict[str, list[Rollout]] = {r.request_id: [] for r in requests}
    for rollout in rollouts:
        if rollout.request_id not in by_id:
            raise ValueError(f"rollout for unknown request '{rollout.request_id}'")
        by_id[rollout.request_id].append(rollout)
    missing = [rid for rid, rs in by_id.items() if not rs]
    if missing:
        raise ValueError(f"no rollouts for requests {missing[:5]}")
    return [tuple(sorted(by_id[r.request_id], key=lambda x: x.index)) for r in requests]


@dataclass(frozen=True)
class ScorerSpec:
    """What one scorer serves, in one typed message."""

    model_dir: str | None  # R's directory (None when reward.alpha == 0: no R is loaded)
    model_cfg: ModelConfig
    reward_cfg: RewardConfig
    micro_batch_size: int
    seed: int
    objective: RewardObjective | None = None  # must match R's learner, so published weights fit
    torch_threads: int = 1
    images: dict[str, Any] = field(default_factory=dict)  # image id -> ObjectRef of its pixels
    monitor: Any = None  # the run's LoopMonitor (busy spans for the timeline), if any


class ScorerActor:
    """Reward-model scorer (see the module docstring)."""

    def __init__(self, spec: ScorerSpec) -> None:
        limit_threads(spec.torch_threads)
        self.spec, self.cfg = spec, spec.reward_cfg
        self.rule = rule_reward(spec.reward_cfg.rule)  # the rule-based term (accuracy by default)
        self.version = 0
        self.reward: Any = None  # a learner.inference.RewardScorer (inference only), when R is loaded
        self.images = ImageCache(refs=spec.images, resolve=ray.get)
        self._views: set[str] = set()  # R's state keys now served as views of a published version
        self._served: FlatWeights | None = None
        if spec.model_dir is None and spec.reward_cfg.alpha > 0:
            raise ValueError("reward.alpha > 0 needs a reward model directory for the scorer")
        if spec.model_dir is not None:
            from medgr2_ray.learner.inference import RewardScorer  # heavy: only inside the actor

            # Inference only (no optimizer, eval mode, no autograd); LoRA (if any) arrives merged in
            # published weights, so the scorer's model is plain.
            self.reward = RewardScorer(spec.model_dir, spec.model_cfg, spec.micro_batch_size, spec.seed, spec.objective)
        self.name = actor_info(0).name or "scorer"
        self.metrics = Metrics(actor=self.name)

    def ready(self) -> ActorInfo:
        """Liveness probe; resolves once the reward model is loaded."""
        flush_spans()  # the spans not yet sent (the timeline reads them next)
        return actor_info(self.version)

    def load_weights(self, weights: WeightVersion) -> int:
        """Replace R's weights (full reward model: backbone + head) with a published version, served as
        views of the fetched buffers where dtype and device allow (no copy; `engines/served.py`)."""
        if self.reward is None:
            raise RuntimeError("this scorer has no reward model (reward.alpha == 0)")
        from medgr2_ray.engines.served import serve_tensors
        from medgr2_ray.sync.flat import unpack_tensors

        flat = fetch_weights(weights, self.metrics)
        named = unpack_tensors(flat)
        state = self.reward.model.state_dict(keep_vars=True)
        missing, unexpected = sorted(set(state) - set(named)), sorted(set(named) - set(state))
        if missing or unexpected:
            raise KeyError(f"reward weights version {weights.version} do not match the scorer's model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); publish the full reward model")
        for name, tensor in named.items():
            if tuple(tensor.shape) != tuple(state[name].shape):
                raise ValueError(f"reward weight '{name}': shape {tuple(tensor.shape)} != scorer "
                                 f"{tuple(state[name].shape)}")
        serve_tensors(state, named, self._views)
        self._served = flat  # the parameters are views of these buffers: keep them until the next version
        self.version = weights.version
        self.metrics.record(WEIGHT_VERSION, self.version, pool="scorer")
        return self.version

    def _maybe_load(self, weights: WeightVersion | None) -> None:
        if weights is not None and self.reward is not None and weights.version > self.version:
            self.load_weights(weights)

    def _rm_scores(self, requests: Sequence[GenerationRequest | None]) -> list[float]:
        if self.reward is None or not any(r is not None for r in requests):
            return [0.0 if self.cfg.alpha == 0 else math.nan] * len(requests)  # alpha == 0: R's term is zeroed
        usable = [i for i, r in enumerate(requests) if r is not None]
        scores = self.reward.score([resolve_images(requests[i], self.images) for i in usable]) if usable else []  # type: ignore[arg-type]
        out = [math.nan] * len(requests)
        for i, score in zip(usable, scores):
            out[i] = score
        return out

    def score(self, requests: Sequence[GenerationRequest], rollouts: Sequence[Rollout],
              weights: WeightVersion | None = None) -> list[ScoredGroup]:
        """One `ScoredGroup` per request, rewards in rollout order (R brought to `weights` first)."""
        start = time.time()
        self._maybe_load(weights)
        grouped = group_rollouts(requests, rollouts)
        flat = [(req, r) for req, rs in zip(requests, grouped) for r in rs]
        use_rm = self.reward is not None and self.cfg.alpha > 0
        rm = self._rm_scores([reward_model_request(req, r) if use_rm else None for req, r in flat])
        rewards = []
        for (request, rollout), score in zip(flat, rm):
            if request.sample is None and self.cfg.beta > 0:
                rewards.append(math.nan)  # accuracy is weighted but there is no answer to check
                continue
            acc = self.rule([request.sample], [rollout.text])[0] if request.sample is not None else 0.0
            norm = normalize_rm_score(score, self.cfg) if math.isfinite(score) else math.nan
            rewards.append(self.cfg.alpha * norm + self.cfg.beta * acc)
        out, k = [], 0
        for request, rs in zip(requests, grouped):
            out.append(ScoredGroup(request.request_id, request, rs, np.asarray(rewards[k : k + len(rs)], np.float32)))
            k += len(rs)
        finite = [r for r in rewards if math.isfinite(r)]
        self.metrics.record(SAMPLES_SCORED, len(rewards))
        if finite:
            self.metrics.record(REWARD_MEAN, float(np.mean(finite)), stage="scored")
        record_span(self.spec.monitor, self.name, "score", start)
        return out

    def score_candidates(self, rollouts: Sequence[Rollout], meta: Mapping[str, CandidateMeta], round_index: int,
                         weights: WeightVersion | None = None) -> ScoredCandidates:
        """Generator rollouts -> samples, each scored by R (brought to `weights` first) with its version."""
        start = time.time()
        self._maybe_load(weights)
        parsed = parse_candidates(rollouts, meta, round_index)
        scores = self._rm_scores([reward_request(s, None) for s in parsed.samples])
        samples = tuple(s.with_provenance(reward=float(r) if math.isfinite(r) else None, rm_version=self.version)
                        for s, r in zip(parsed.samples, scores))
        self.metrics.record(SAMPLES_SCORED, len(samples))
        record_span(self.spec.monitor, self.name, "score", start)
        return ScoredCandidates(tuple(meta), samples, tuple((f.reason, f.text) for f in parsed.failures),
                                parsed.duplicates, self.version)
