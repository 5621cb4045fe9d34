"""What one training step of each MedGR² learner does with the batch it pulled: one function per `Recipe`.

The learners of the cycle share one host (`actors/learner_host.py`) and differ only in the steps they are
asked to take. A step receives the batch its work item names (samples drawn by the kept-sample store, or
a `TakeResult` from the rollout buffer), this rank's share of it, and turns it into the learner's
examples here:
- GENERATOR_SFT: G imitates rendered samples (its bootstrap on seeds, its rejection-sampling fine-tuning);
- REWARD_ANSWER: a verifier R learns to answer the questions (stated answers taken as right);
- REWARD_GRADE: R regresses onto graded data built from the samples (faithful / perturbed / incoherent /
  irrelevant; `batch_size` of the 4x graded examples, drawn for the step);
- SOLVER_SFT: P learns the answers, images augmented per (seed, step, rank);
- SOLVER_GRPO: P's GRPO step on its share of the groups, reported as a `StepReport`.
Images arrive as ids and are read from the process's one `ImageCache`. No Ray here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medgr2_ray.algo.perturb import build_graded_samples
from medgr2_ray.algo.requests import (generator_sft_examples, resolve_images, reward_examples, reward_request,
                                      solver_sft_examples)
from medgr2_ray.config import AugmentConfig, GradedDataConfig
from medgr2_ray.data.images import ImageLookup
from medgr2_ray.messages import Recipe, StepReport, TakeResult
from medgr2_ray.types import MedImage, RewardExample, Sample


@dataclass(frozen=True)
class RecipeContext:
    """What the recipes need besides the batch: where pixels and image records come from, and settings."""

    images: ImageLookup
    pool: Mapping[str, MedImage]  # the training images by id (G's prompt names their modality and anatomy;
    # R's irrelevant pairings move a sample to another of them)
    seed: int
    rank: int = 0
    world_size: int = 1
    graded: GradedDataConfig = field(default_factory=GradedDataConfig)
    augment: bool = False
    augmentation: AugmentConfig | None = None


@dataclass(frozen=True)
class StepOutcome:
    """A step's globally reduced metrics, and for GRPO what this rank trained."""

    metrics: dict[str, float]
    report: StepReport | None = None


def _mine(items: Sequence[Any], ctx: RecipeContext) -> list[Any]:
    """This rank's share of a global batch: items r, r + W, r + 2W, ..."""
    return list(items[ctx.rank :: ctx.world_size])


def generator_sft(learner: Any, samples: Sequence[Sample], step: int, ctx: RecipeContext) -> StepOutcome:
    """G learns to write `samples` (prompted with the strategy each was written with)."""
    return StepOutcome(learner.sft_step(generator_sft_examples(_mine(samples, ctx), ctx.pool, ctx.images)))


def reward_answer(learner: Any, samples: Sequence[Sample], step: int, ctx: RecipeContext) -> StepOutcome:
    """A verifier R learns to answer: each sample as written is a right answer."""
    examples = [RewardExample(reward_request(s, ctx.images), ctx.graded.faithful, "faithful") for s in samples]
    return StepOutcome(learner.answer_step(_mine(examples, ctx)))


def graded_batch(samples: Sequence[Sample], size: int, step: int, ctx: RecipeContext) -> list[RewardExample]:
    """`size` of the graded examples built from `samples` (4 per sample), drawn for (seed, step)."""
    images = [(i.image_id, i.path, i.modality) for i in ctx.pool.values()]
    graded = build_graded_samples(samples, ctx.graded, ctx.seed + step, images)
    examples = reward_examples(graded, ctx.images)
    rng = random.Random(f"{ctx.seed}|grade|{step}")
    return rng.sample(examples, min(size, len(examples)))


def reward_grade(learner: Any, samples: Sequence[Sample], step: int, ctx: RecipeContext) -> StepOutcome:
    """R regresses onto graded data built from `samples` (as many examples as samples)."""
    return StepOutcome(learner.rm_step(_mine(graded_batch(samples, len(samples), step, ctx), ctx)))


def solver_sft(learner: Any, samples: Sequence[Sample], step: int, ctx: RecipeContext) -> StepOutcome:
    """P learns the answers; images augmented per (seed, step, rank) so a redone step is identical."""
    rng = np.random.default_rng([ctx.seed, step, ctx.rank]) if ctx.augment else None
    return StepOutcome(learner.sft_step(solver_sft_examples(_mine(samples, ctx), ctx.images, rng, ctx.augmentation)))


def solver_grpo(learner: Any, take: TakeResult, step: int, ctx: RecipeContext) -> StepOutcome:
    """P's GRPO step on this rank's share of the taken groups (their images filled in here)."""
    mine = _mine(take.batch.groups, ctx)
    before = int(learner.version)
    groups = [replace(g, request=resolve_images(g.request, ctx.images)) for g in mine]
    metrics = {k: float(v) for k, v in learner.grpo_step(groups).items()}
    report = StepReport(ctx.rank, before, int(learner.version), tuple(g.group_id for g in mine),
                        tuple(g.weight_version for g in mine), take.dropped_stale_ids, metrics, 0.0, None, take.snapshot)
    return StepOutcome(metrics, report)


RECIPES: dict[Recipe, Callable[[Any, Any, int, RecipeContext], StepOutcome]] = {
    Recipe.GENERATOR_SFT: generator_sft,
    Recipe.REWARD_ANSWER: reward_answer,
    Recipe.REWARD_GRADE: reward_grade,
    Recipe.SOLVER_SFT: solver_sft,
    Recipe.SOLVER_GRPO: solver_grpo,
}


def run_recipe(learner: Any, recipe: Recipe, batch: Any, step: int, ctx: RecipeContext) -> StepOutcome:
    """Run one training step of `recipe` on `batch` (every rank calls this with the same batch)."""
    return RECIPES[recipe](learner, batch, step, ctx)
