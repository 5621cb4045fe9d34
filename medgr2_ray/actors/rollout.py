"""RolloutActor: a long-lived process that hosts one rollout engine (HF or vLLM) and generates.

The generator pool and the policy pool are two pools of this same class with different models: the
class never looks at a role string. Each `generate` call carries the newest published `WeightVersion`;
if it is newer than what the engine holds, the actor loads it first (between batches, never during
one), so every `Rollout` records the version that really produced it. After a crash Ray restarts the
actor (`PoolConfig.max_restarts`): `__init__` rebuilds the engine from the model directory at version
0 and the next call brings it up to date; the controller re-issues the calls that died with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from medgr2_ray.actors.info import actor_info, limit_threads
from medgr2_ray.messages import ActorInfo
from medgr2_ray.config import EngineConfig, ModelConfig
from medgr2_ray.metrics import SAMPLES_GENERATED, TOKENS_GENERATED, TOKENS_PER_S, WEIGHT_VERSION, Metrics
from medgr2_ray.sync.weights import fetch_weights
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams, WeightVersion


class RolloutActor:
    """Engine + `generate` + `load_weights` (see the module docstring)."""

    def __init__(
        self, pool: str, model_dir: str, model_cfg: ModelConfig, engine_cfg: EngineConfig, seed: int,
        torch_threads: int = 1,
    ) -> None:
        from medgr2_ray.engines import build_engine  # heavy: only inside the actor process

        limit_threads(torch_threads)
        self.pool = pool
        self.engine = build_engine(model_dir, model_cfg, engine_cfg, seed=seed)
        self.metrics = Metrics(pool=pool, actor=actor_info(0).name or pool)
        self.metrics.record(WEIGHT_VERSION, self.engine.weight_version)

    def ready(self) -> ActorInfo:
        """Cheap liveness probe; resolves once the engine is built."""
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
        if weights is not None and weights.version > self.engine.weight_version:
            self.load_weights(weights)
        start = time.perf_counter()
        rollouts = self.engine.generate(requests, sampling)
        seconds = time.perf_counter() - start
        tokens = sum(len(r.completion_token_ids) for r in rollouts)
        self.metrics.record(SAMPLES_GENERATED, len(rollouts))
        self.metrics.record(TOKENS_GENERATED, tokens)
        self.metrics.record(TOKENS_PER_S, tokens / seconds if seconds > 0 else 0.0)
        return rollouts
