"""RolloutActor: a long-lived process that hosts one rollout engine (HF or vLLM) and generates.

The generator pool and the policy pool are two pools of this same class with different specs (model,
pool name): the class never looks at a role string. Each `generate` call carries the newest published
`WeightVersion`; if it is newer than what the engine holds, the actor loads it first (between batches,
never during one), so every `Rollout` records the version that really produced it. Requests arrive with
image ids; the actor fills in the pixels from its own image cache (the pixels were put in the object
store once, so they never pass through the driver). After a crash Ray restarts the actor
(`PoolConfig.max_restarts`): `__init__` rebuilds the engine from the model directory at version 0 and the
next call brings it up to date; the controller re-issues the calls that died with it.

`generate_after` is `generate` chained on a learner step: the controller submits it while the step runs,
with where the step's result will be (`StepSource`); the actor asks the learner's feed for it and
generation starts with the weights the step published the moment it publishes. The answer comes straight
from the feed: one hand-over less than a result ref, which Ray resolves through the controller that owns it
(learner -> feed -> controller -> rollout). Calls to an actor from one caller run in the order they were
submitted, with or without arguments still pending, so waiting inside the call holds up nothing that a
pending argument would not.
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
from medgr2_ray.messages import ActorInfo, StepSource, WorkDone
from medgr2_ray.metrics import SAMPLES_GENERATED, TOKENS_GENERATED, TOKENS_PER_S, WEIGHT_VERSION, Metrics
from medgr2_ray.sync.weights import fetch_weights
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams, WeightVersion


class StepNotDone(RuntimeError):
    """The learner step a `generate_after` was chained on trained nothing (its batch could not be read), or
    its weights are unknown here (the feed died before answering, or answered for a report it lost): the
    prompts were admitted for the step after it, so the controller issues them again."""


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
        step: StepSource,
    ) -> list[Rollout]:
        """`generate` once the learner step at `step` has finished, with the weights it published (or the
        newest, if a later step has published since), or `current` (the newest before it) if it published none. A step that failed, or whose result the
        feed cannot give (it died meanwhile, or lost the report), raises `StepNotDone`."""
        try:
            dones: list[WorkDone] = ray.get(step.feed.result.remote(step.index))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise StepNotDone(f"{self.name}: the learner's feed died before step item {step.index} "
                              f"ended ({type(exc).__name__})") from None
        lead = dones[0]
        if lead.error is not None or lead.extra.get("report_lost"):
            raise StepNotDone(f"{self.name}: the learner step this generate waited for trained nothing or its "
                              f"report is lost: {lead.error or 'report lost'}")
        weights = lead.weights
        if weights is None and lead.version > current.version:  # published, and superseded since: the newest
            weights = ray.get(step.feed.latest.remote())
        return self.generate(requests, sampling, weights if weights is not None else current)
