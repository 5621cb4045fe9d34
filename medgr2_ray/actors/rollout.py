"""RolloutActor: a long-lived process that hosts one rollout engine (HF or vLLM) and generates.

The generator pool and the policy pool are two pools of this same class with different specs (model,
pool name): the class never looks at a role string. Each `generate` call carries the newest published
`WeightVersion`; if it is newer than what the engine holds, the actor loads it first (between batches,
never during one), so every `Rollout` records the version that really produced it. Requests arrive with
image ids; the actor fills in the pixels from its own image cache (the pixels were put in the object
store once, so they never pass through the driver). After a crash Ray restarts the actor
(`PoolConfig.max_restarts`): `__init__` rebuilds the engine from the model directory at version 0 and the
next call brings it up to date; the controller re-issues the calls that died with it.

`generate_after` is `generate` chained on a learner step: the controller submits it with the step's
result ref while the step runs, Ray resolves that ref before the call runs, and generation starts with
the weights the step published the moment it publishes, without a round trip through the controller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from medgr2_ray.actors.info import actor_info, flush_spans, limit_threads, record_span
from medgr2_ray.algo.requests import resolve_images
from medgr2_ray.config import EngineConfig, ModelConfig
from medgr2_ray.data.images import ImageCache
from medgr2_ray.messages import ActorInfo, WorkDone
from medgr2_ray.metrics import SAMPLES_GENERATED, TOKENS_GENERATED, TOKENS_PER_S, WEIGHT_VERSION, Metrics
from medgr2_ray.sync.weights import fetch_weights
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams, WeightVersion


class StepNotDone(RuntimeError):
    """The learner step a `generate_after` was chained on trained nothing (its batch could not be read):
    the prompts were admitted for the step after it, so the controller issues them again."""


@dataclass(frozen=True)
class RolloutSpec:
    """What one rollout actor serves, in one typed message."""

    pool: str  # the pool's name (metrics and the timeline label the actor with it)
    model_dir: str
    model_cfg: ModelConfig
    engine_cfg: EngineConfig
    seed: int
    torch_threads: int = 1
    images: dict[str, Any] = field(default_factory=dict)  # image id -> ObjectRef of its pixels
    monitor: Any = None  # the run's LoopMonitor (busy spans for the timeline), if any


class RolloutActor:
    """Engine + `generate` + `load_weights` (see the module docstring)."""

    def __init__(self, spec: RolloutSpec) -> None:
        from medgr2_ray.engines import build_engine  # heavy: only inside the actor process

        limit_threads(spec.torch_threads)
        self.spec = spec
        self.engine = build_engine(spec.model_dir, spec.model_cfg, spec.engine_cfg, seed=spec.seed)
        self.images = ImageCache(refs=spec.images, resolve=ray.get)
        self.name = actor_info(0).name or spec.pool
        self.metrics = Metrics(pool=spec.pool, actor=self.name)
        self.metrics.record(WEIGHT_VERSION, self.engine.weight_version)

    def ready(self) -> ActorInfo:
        """Cheap liveness probe; resolves once the engine is built."""
        flush_spans()  # the spans not yet sent (the timeline reads them next)
        return actor_info(self.engine.weight_version)

    def load_weights(self, weights: WeightVersion) -> int:
        """Bring the engine to `weights` unless it already holds that version; returns the held version."""
        if weights.version != self.engine.weight_version:
            self.engine.load_weights(fetch_weights(weights, self.metrics), weights.version)
            self.metrics.record(WEIGHT_VERSION, self.engine.weight_version)
        return self.engine.weight_version

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams, weights: WeightVersion | None = None
    ) -> list[Rollout]:
        """`sampling.n` rollouts per request with the newest weights given (loaded first if newer)."""
        start = time.time()
        if weights is not None and weights.version > self.engine.weight_version:
            self.load_weights(weights)
            record_span(self.spec.monitor, self.name, "load_weights", start)  # inside the generate span
        rollouts = self.engine.generate([resolve_images(r, self.images) for r in requests], sampling)
        seconds = time.time() - start
        tokens = sum(len(r.completion_token_ids) for r in rollouts)
        self.metrics.record(SAMPLES_GENERATED, len(rollouts))
        self.metrics.record(TOKENS_GENERATED, tokens)
        self.metrics.record(TOKENS_PER_S, tokens / seconds if seconds > 0 else 0.0)
        record_span(self.spec.monitor, self.name, "generate", start)
        return rollouts

    def generate_after(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams, current: WeightVersion,
        step: Sequence[WorkDone],
    ) -> list[Rollout]:
        """`generate` once the learner step whose every rank's `WorkDone` is `step` has finished (the
        controller passes its result ref; Ray resolves it first), with the weights it published, or
        `current` (the newest before it) if it published none. A step that failed raises `StepNotDone`."""
        lead = step[0]
        if lead.error is not None:
            raise StepNotDone(f"{self.name}: the learner step this generate waited for failed: {lead.error}")
        return self.generate(requests, sampling, lead.weights if lead.weights is not None else current)
