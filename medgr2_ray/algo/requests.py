"""The data plumbing of a MedGR² round, as pure functions: what each model is asked and taught.

Every function here turns samples and images into typed requests/examples for one model, or model
output back into samples, with every loss of data counted:
- generator: `generator_requests` (which image, task and prompting strategy) and
  `generator_sft_examples` (rejection-sampling fine-tuning targets = rendered accepted samples);
- generated text -> samples: `parse_candidates` (failures kept with their reasons);
- reward model: `reward_examples` (graded samples -> RewardExample, image of the graded sample);
- solver: `solver_requests` and `solver_sft_examples` (augmented images when asked).
No Ray, no models: the cycle calls these between actor calls.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from medgr2_ray.algo.perturb import GradedSample
from medgr2_ray.config import AugmentConfig
from medgr2_ray.data.augment import augment_image
from medgr2_ray.data.images import ImageLookup
from medgr2_ray.prompts import ParseFailure, generator_prompt, parse_generated, render_sample, reward_prompt, solver_prompt
from medgr2_ray.types import (GenerationRequest, MedImage, PromptStrategy, Provenance, RewardExample, Rollout, Sample,
                              SFTExample, TaskType)



@dataclass(frozen=True)
class CandidateMeta:
    """What the cycle asked the generator for one request (to turn its text back into a sample)."""

    image: MedImage
    task: TaskType
    strategy: PromptStrategy


@dataclass(frozen=True)
class ParsedCandidates:
    """Generated samples and every output that did not parse, with counts by reason."""

    samples: tuple[Sample, ...]
    failures: tuple[ParseFailure, ...]
    duplicates: int

    def failure_counts(self) -> dict[str, int]:
        """How many outputs failed for each reason."""
        return dict(Counter(f.reason for f in self.failures))


def _image_request(request_id: str, prompt: str, image_id: str, lookup: ImageLookup | None,
                   sample: Sample | None = None) -> GenerationRequest:
    """A request with the image's pixels, or (no `lookup`) with its id for the actor to fill in."""
    if lookup is None:
        return GenerationRequest(request_id, prompt, sample=sample, image_ids=(image_id,))
    return GenerationRequest(request_id, prompt, (lookup(image_id),), sample=sample)


def resolve_images(request: GenerationRequest, lookup: ImageLookup) -> GenerationRequest:
    """The request with the pixels of its `image_ids` (unchanged when it already carries pixels)."""
    if request.images or not request.image_ids:
        return request
    return replace(request, images=tuple(lookup(i) for i in request.image_ids))


def generator_requests(images: Sequence[MedImage], tasks: Sequence[TaskType], strategies: Sequence[PromptStrategy],
                       lookup: ImageLookup | None, round_index: int, prefix: str | None = None
                       ) -> tuple[list[GenerationRequest], dict[str, CandidateMeta]]:
    """One request per (image, task, strategy); ids are stable so a re-issued request is recognised.
    Without `lookup` the requests carry image ids (see `resolve_images`); `prefix` replaces `r<round>`."""
    requests: list[GenerationRequest] = []
    meta: dict[str, CandidateMeta] = {}
    head = prefix if prefix is not None else f"r{round_index}"
    for image, task, strategy in itertools.product(images, tasks, strategies):
        request_id = f"{head}:{image.image_id}:{task.name}:{strategy.value}"
        requests.append(_image_request(request_id, generator_prompt(image.modality, image.anatomy, task, strategy),
                                       image.image_id, lookup))
        meta[request_id] = CandidateMeta(image, task, strategy)
    return requests, meta


def generator_sft_examples(samples: Sequence[Sample], pool: Mapping[str, MedImage], lookup: ImageLookup,
                           strategy: PromptStrategy = PromptStrategy.DIRECT) -> list[SFTExample]:
    """Teach the generator to write `samples` (seeds in round 0, its own accepted samples later)."""
    out = []
    for s in samples:
        image = pool[s.image_id]
        chosen = s.provenance.prompt_strategy or strategy
        prompt = generator_prompt(image.modality, image.anatomy, s.task_type, chosen)
        out.append(SFTExample(GenerationRequest(f"gsft:{s.sample_id}", prompt, (lookup(s.image_id),)), render_sample(s)))
    return out


def parse_candidates(rollouts: Sequence[Rollout], meta: Mapping[str, CandidateMeta], round_index: int) -> ParsedCandidates:
    """Generator rollouts -> samples with provenance; unparseable outputs and duplicates are counted."""
    samples: dict[str, Sample] = {}
    failures: list[ParseFailure] = []
    duplicates = 0
    for rollout in rollouts:
        m = meta[rollout.request_id]
        provenance = Provenance(producer="generator", model_version=rollout.weight_version, round=round_index,
                                prompt_strategy=m.strategy)
        parsed = parse_generated(rollout.text, image_id=m.image.image_id, image_path=m.image.path,
                                 modality=m.image.modality, task=m.task, provenance=provenance)
        if isinstance(parsed, ParseFailure):
            failures.append(parsed)
        elif parsed.sample_id in samples:
            duplicates += 1
        else:
            samples[parsed.sample_id] = parsed
    return ParsedCandidates(tuple(samples.values()), tuple(failures), duplicates)


def reward_request(sample: Sample, lookup: ImageLookup | None) -> GenerationRequest:
    """What the reward model reads: the sample's image and the rendered sample (the sample itself rides
    along: a verifier head answers its question)."""
    return _image_request(f"rm:{sample.sample_id}", reward_prompt(sample), sample.image_id, lookup, sample)


def reward_examples(graded: Sequence[GradedSample], lookup: ImageLookup) -> list[RewardExample]:
    """Graded samples as reward-model training examples (an irrelevant sample carries the other image)."""
    return [RewardExample(reward_request(g.sample, lookup), g.target, g.kind) for g in graded]


def solver_request(sample: Sample, image: np.ndarray) -> GenerationRequest:
    """The solver's prompt for one sample."""
    return GenerationRequest(f"solve:{sample.sample_id}", solver_prompt(sample), (image,), sample=sample)


def solver_requests(samples: Sequence[Sample], lookup: ImageLookup | None) -> list[GenerationRequest]:
    """Solver prompts with the original images (evaluation and GRPO); image ids only without `lookup`."""
    return [_image_request(f"solve:{s.sample_id}", solver_prompt(s), s.image_id, lookup, s) for s in samples]


def solver_sft_examples(samples: Sequence[Sample], lookup: ImageLookup, rng: np.random.Generator | None,
                        augmentation: AugmentConfig | None = None) -> list[SFTExample]:
    """SFT examples whose target is the answer's option text; images augmented (with `augmentation`'s
    strengths, the defaults when None) when `rng` is given."""
    out = []
    for s in samples:
        image = lookup(s.image_id)
        if rng is not None:
            image = augment_image(image, rng, augmentation)
        out.append(SFTExample(solver_request(s, image), s.answer))
    return out
