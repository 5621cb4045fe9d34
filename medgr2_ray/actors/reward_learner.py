"""RewardLearnerActor: the long-lived process that trains MedGR²'s reward model R between rounds.

It hosts one `learner.RewardLearner` (VLM backbone + scalar head, MSE onto graded targets) and
publishes R's full weights through the object store after each refresh, so the ScorerActor pool loads
them in place (`ScorerActor.load_weights`) without rebuilding. It also writes R as a directory
(`save_pretrained`) for the report and for later stages. A separate class from `LearnerActor` because
it runs another objective; no actor switches behaviour on a role string.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medgr2_ray.actors.info import actor_info, limit_threads
from medgr2_ray.messages import ActorInfo
from medgr2_ray.config import LearnerConfig, ModelConfig
from medgr2_ray.metrics import Metrics
from medgr2_ray.sync.weights import publish_weights
from medgr2_ray.types import GenerationRequest, RewardExample, RewardObjective, WeightVersion


class RewardLearnerActor:
    """Trains R (see the module docstring)."""

    def __init__(self, model_dir: str, model_cfg: ModelConfig, learner_cfg: LearnerConfig, seed: int,
                 torch_threads: int = 1, objective: RewardObjective | None = None) -> None:
        from medgr2_ray.learner.reward import RewardLearner  # heavy: only inside the actor process

        limit_threads(torch_threads)
        self.learner = RewardLearner(model_dir, model_cfg, learner_cfg, seed, objective=objective)
        self.metrics = Metrics()

    def ready(self) -> ActorInfo:
        """Liveness probe; resolves once R is built."""
        return actor_info(int(self.learner.version))

    def train(self, batches: Sequence[Sequence[RewardExample]]) -> list[dict[str, float]]:
        """One `rm_step` per batch, in order; the per-step metrics."""
        return [self.learner.rm_step(list(batch)) for batch in batches]

    def answer(self, batches: Sequence[Sequence[RewardExample]]) -> list[dict[str, float]]:
        """One `answer_step` per batch (a verifier learning to answer), in order; the per-step metrics."""
        return [self.learner.answer_step(list(batch)) for batch in batches]

    def eval_loss(self, examples: Sequence[RewardExample]) -> dict[str, float]:
        """Held-out MSE, no update."""
        return self.learner.eval_loss(list(examples))

    def score(self, requests: Sequence[GenerationRequest]) -> list[float]:
        """R's scores for rendered samples (the learner's own, freshest R)."""
        return self.learner.score(list(requests))

    def publish(self) -> WeightVersion:
        """Publish R's full weights (backbone + head) for the scorer pool."""
        flat = self.learner.export_weights()  # one rank: the exporter always gets the weights
        assert flat is not None
        return publish_weights(flat, int(self.learner.version), self.metrics)

    def save_pretrained(self, directory: str) -> str:
        """Write R as a directory (backbone + head in safetensors)."""
        return str(self.learner.save_pretrained(Path(directory)))

    def save_checkpoint(self, directory: str, extra: dict[str, Any]) -> str:
        """Exact checkpoint (weights, optimizer, schedule, version, RNG) for resuming the rounds."""
        return str(self.learner.save_checkpoint(directory, extra))

    def load_checkpoint(self, directory: str) -> dict[str, Any]:
        """Restore a checkpoint written by `save_checkpoint`; returns its `extra`."""
        return self.learner.load_checkpoint(directory)

    def export_state_numpy(self) -> dict[str, Any]:
        """The trainable weights as numpy arrays (tests compare runs with it)."""
        return {k: v.detach().cpu().numpy() for k, v in self.learner.trainable_parameters().items()}
