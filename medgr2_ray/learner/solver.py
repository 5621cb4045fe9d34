"""Train and score a fresh solver in one process (no Ray): what the Med-R1 transfer protocols and the
learning benchmarks do per row or per seed.

`new_solver` builds a `PolicyLearner` from a model directory, `sft_solver` fine-tunes it on batches
balanced over (modality, task) drawn by `algo.batches` (the same draws as the solver stage), and
`predict` picks each question's option by length-normalised likelihood and, when asked, by greedy decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medgr2_ray.algo.batches import balanced_weights, batch_indices
from medgr2_ray.algo.requests import solver_requests, solver_sft_examples
from medgr2_ray.config import AugmentConfig, Config
from medgr2_ray.data.images import ImageLookup
from medgr2_ray.types import Sample

if TYPE_CHECKING:
    from medgr2_ray.learner.policy import PolicyLearner


def new_solver(cfg: Config, model_dir: str | Path, steps: int) -> PolicyLearner:
    """A fresh solver from the weights at `model_dir`, its learning-rate schedule sized to `steps`."""
    from medgr2_ray.learner.policy import PolicyLearner

    learner_cfg = cfg.learner.model_copy(update={"schedule_steps": max(1, steps)})
    return PolicyLearner(model_dir, cfg.policy, learner_cfg, cfg.grpo, cfg.run.seed)


def sft_solver(learner: PolicyLearner, train: Sequence[Sample], lookup: ImageLookup, steps: int, batch: int,
               seed: int, augment: bool, augmentation: AugmentConfig | None = None) -> list[float]:
    """`steps` SFT steps on batches balanced over (modality, task); returns every step's loss.

    Batches depend only on (seed, step), as in the solver stage (`algo.batches.batch_indices`)."""
    weights = balanced_weights([f"{s.modality.value}|{s.task_type.value}" for s in train])
    losses = []
    for step in range(steps):
        idx = batch_indices(weights, batch, seed, step)
        rng = np.random.default_rng([seed, step]) if augment else None
        metrics = learner.sft_step(solver_sft_examples([train[i] for i in idx], lookup, rng, augmentation))
        losses.append(float(metrics.get("loss", float("nan"))))
    return losses


def predict(learner: PolicyLearner, cfg: Config, test: Sequence[Sample], lookup: ImageLookup, greedy: bool
            ) -> tuple[list[str], list[str] | None]:
    """Each question's option by length-normalised likelihood, and by greedy decoding when asked
    ('' where the decoded text names no option)."""
    from medgr2_ray.algo.rewards import extract_answer
    from medgr2_ray.eval.protocols import choose_by_likelihood
    from medgr2_ray.types import SamplingParams

    requests = solver_requests(test, lookup)
    likely = choose_by_likelihood(learner, test, requests)
    if not greedy:
        return likely, None
    from medgr2_ray.engines.hf import HFEngine

    engine = HFEngine(learner.loaded.path, cfg.policy, cfg.engine, seed=cfg.run.seed)
    engine.load_weights(learner.export_weights(), learner.version)
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.grpo.max_new_tokens)
    texts = {r.request_id: r.text for r in engine.generate(requests, sampling)}
    return likely, [extract_answer(texts[r.request_id], s.options) or "" for r, s in zip(requests, test)]
