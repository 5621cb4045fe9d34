"""ScorerActor: batched reward-model inference that turns rollouts into scored groups.

For each completion a' of a question q about image x, MedGR²'s GRPO reward is
`alpha * norm(R(x, q, a')) + beta * 1[extract(a') == answer]` (`algo.rewards.combined_reward`). R reads
the sample rendered with a' as its answer (`prompts.reward_prompt`), all completions of a call in
micro-batches. With `reward.alpha == 0` R cannot change any reward, so no reward model is loaded (the
accuracy-only ablation, and CPU tests). A completion R cannot score (NaN) or a request without a sample
when accuracy is weighted gets a NaN reward: the learner drops such groups and counts them, so one bad
sample never kills the run. `load_weights` takes a new R after a reward-model round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from medgr2_ray.actors.info import actor_info, limit_threads
from medgr2_ray.messages import ActorInfo
from medgr2_ray.algo.rewards import accuracy_reward, extract_answer, normalize_rm_score
from medgr2_ray.config import ModelConfig, RewardConfig
from medgr2_ray.metrics import REWARD_MEAN, SAMPLES_SCORED, WEIGHT_VERSION, Metrics
from medgr2_ray.prompts import reward_prompt
from medgr2_ray.sync.weights import fetch_weights
from medgr2_ray.types import GenerationRequest, Rollout, ScoredGroup, WeightVersion


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


class ScorerActor:
    """Reward-model scorer (see the module docstring)."""

    def __init__(
        self, model_dir: str | None, model_cfg: ModelConfig, reward_cfg: RewardConfig, micro_batch_size: int,
        seed: int, torch_threads: int = 1,
    ) -> None:
        limit_threads(torch_threads)
        self.cfg = reward_cfg
        self.version = 0
        self.reward: Any = None  # a learner.inference.RewardScorer when R is weighted
        if reward_cfg.alpha > 0:
            if model_dir is None:
                raise ValueError("reward.alpha > 0 needs a reward model directory for the scorer")
            from medgr2_ray.learner.inference import RewardScorer  # heavy: only inside the actor

            # Inference only (no optimizer, eval mode, no autograd); LoRA (if any) arrives merged in
            # published weights, so the scorer's model is plain.
            self.reward = RewardScorer(model_dir, model_cfg, micro_batch_size, seed)
        self.metrics = Metrics(actor=actor_info(0).name or "scorer")

    def ready(self) -> ActorInfo:
        """Liveness probe; resolves once the reward model is loaded."""
        return actor_info(self.version)

    def load_weights(self, weights: WeightVersion) -> int:
        """Replace R's weights (full reward model: backbone + head) with a published version."""
        if self.reward is None:
            raise RuntimeError("this scorer has no reward model (reward.alpha == 0)")
        from medgr2_ray.sync.flat import unpack_tensors

        self.reward.load_state(unpack_tensors(fetch_weights(weights, self.metrics)))
        self.version = weights.version
        self.metrics.record(WEIGHT_VERSION, self.version, pool="scorer")
        return self.version

    def _rm_scores(self, requests: Sequence[GenerationRequest | None]) -> list[float]:
        if self.reward is None:
            return [0.0] * len(requests)  # alpha == 0: R's term is multiplied by zero anyway
        usable = [i for i, r in enumerate(requests) if r is not None]
        scores = self.reward.score([requests[i] for i in usable]) if usable else []
        out = [math.nan] * len(requests)
        for i, score in zip(usable, scores):
            out[i] = score
        return out

    def score(self, requests: Sequence[GenerationRequest], rollouts: Sequence[Rollout]) -> list[ScoredGroup]:
        """One `ScoredGroup` per request, rewards in rollout order."""
        grouped = group_rollouts(requests, rollouts)
        flat = [(req, r) for req, rs in zip(requests, grouped) for r in rs]
        rm = self._rm_scores([reward_model_request(req, r) if self.reward else None for req, r in flat])
        rewards = []
        for (request, rollout), score in zip(flat, rm):
            if request.sample is None and self.cfg.beta > 0:
                rewards.append(math.nan)  # accuracy is weighted but there is no answer to check
                continue
            acc = accuracy_reward([request.sample], [rollout.text])[0] if request.sample is not None else 0.0
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
        return out
