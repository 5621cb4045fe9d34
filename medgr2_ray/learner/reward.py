"""The reward-model learner: MSE regression of R(image, question, answer) onto graded targets.

MedGR²'s reward model is a VLM backbone with a scalar head (`models.reward_head.RewardModel`), trained
on automatically graded data (faithful 10, perturbed 6, incoherent 0, irrelevant -6) and refreshed
each round with the policy's own samples. This learner runs that regression with the same
micro-batching, strategies, export and checkpoints as the policy learner; LoRA (when configured) goes
on the backbone, the head always trains in full.

A directory that already holds a reward head continues from it; a plain VLM directory gets a new,
seeded head. Requests that cannot be encoded (bad image arrays, placeholder tokens in text) and
non-finite targets are dropped and counted in the step's metrics, never silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from medgr2_ray.algo.losses import reward_regression_loss
from medgr2_ray.config import LearnerConfig, ModelConfig
from medgr2_ray.learner.microbatch import global_sum, reduce_metrics, split_micro_batches, synced_micro_batch_count
from medgr2_ray.learner.trainer import Trainer, inputs_to, merged_lora_state
from medgr2_ray.models.loading import apply_lora
from medgr2_ray.models.processing import check_request, encode_prompts
from medgr2_ray.models.reward_head import HEAD_FILE, RewardModel
from medgr2_ray.sync.flat import pack_tensors
from medgr2_ray.types import FlatWeights, GenerationRequest, RewardExample

REWARD_COUNTS = ("examples_in", "examples_dropped_bad_request", "examples_dropped_bad_target", "examples_trained")


class RewardLearner(Trainer):
    """Trains the reward model R by regression; `score` gives R's predictions for requests."""

    def __init__(
        self, model_dir: str | Path, model_cfg: ModelConfig, learner_cfg: LearnerConfig, seed: int,
        rank: int = 0, world_size: int = 1, local_rank: int | None = None,
    ) -> None:
        torch.manual_seed(seed)  # identical head and LoRA initialisation on every rank
        if (Path(model_dir) / HEAD_FILE).is_file():
            reward_model = RewardModel.from_pretrained(model_dir, model_cfg.dtype, model_cfg.trust_remote_code)
        else:
            reward_model = RewardModel.from_backbone(model_dir, model_cfg.dtype, model_cfg.trust_remote_code, seed=seed)
        if model_cfg.lora.enabled:
            reward_model.backbone = apply_lora(reward_model.backbone, model_cfg.lora)
        self.reward_model = reward_model
        super().__init__(reward_model, learner_cfg, seed, rank, world_size, local_rank)
        self.lora = model_cfg.lora.enabled

    def _encode(self, requests: Sequence[GenerationRequest]):  # noqa: ANN202
        return inputs_to(encode_prompts(self.reward_model.loaded, requests, padding_side="left"), self.device)

    def _usable(self, examples: Sequence[RewardExample], counts: Counter[str]) -> list[RewardExample]:
        """Examples that can be trained on; the rest are counted by reason."""
        kept = []
        for example in examples:
            if check_request(example.request) is not None:
                counts["examples_dropped_bad_request"] += 1
            elif not math.isfinite(float(example.target)):
                counts["examples_dropped_bad_target"] += 1
            else:
                kept.append(example)
        return kept

    def _pass(self, examples: Sequence[RewardExample], train: bool) -> dict[str, float]:
        """Regression loss (and, when training, accumulated gradients) over micro-batches and ranks."""
        counts: Counter[str] = Counter(examples_in=len(examples))
        kept = self._usable(examples, counts)
        counts["examples_trained"] = len(kept)
        totals = global_sum([counts[k] for k in REWARD_COUNTS])
        stats = dict(zip(REWARD_COUNTS, totals))
        if stats["examples_trained"] <= 0:
            return {**stats, "skipped": 1.0}
        micro = split_micro_batches(kept, self.cfg.micro_batch_size)
        model = self.strategy.module if train else self.model
        parts, weights = [], []
        for i in range(synced_micro_batch_count(len(micro))):
            batch, weight = (micro[i], 1.0) if i < len(micro) else (micro[0] if micro else None, 0.0)
            if batch is None:  # this rank has nothing at all: pad with a neutral text-only example
                batch = [RewardExample(GenerationRequest("__padding__", "padding"), 0.0, "padding")]
            pred = model(self._encode([e.request for e in batch]))
            target = torch.tensor([float(e.target) for e in batch], device=pred.device)
            loss, metrics = reward_regression_loss(pred, target, stats["examples_trained"])
            if train:
                self.strategy.backward(loss * weight)
            # Per-micro-batch correlation does not aggregate (and may be absent): keep additive metrics.
            parts.append({k: metrics[k] for k in ("loss", "mse", "mae", "pred_mean", "target_mean")})
            weights.append(len(batch) * weight)
        return {**reduce_metrics(parts, weights, summed=("loss",)), **stats, "skipped": 0.0}

    def rm_step(self, examples: Sequence[RewardExample]) -> dict[str, float]:
        """One optimizer step of mean squared error on these graded examples."""
        self.model.train()
        metrics = self._pass(examples, train=True)
        if metrics["skipped"]:
            return {**metrics, "version": float(self.version)}
        return {**metrics, **self._apply_step()}

    def eval_loss(self, examples: Sequence[RewardExample]) -> dict[str, float]:
        """Mean squared error on held-out examples, no update."""
        with self.evaluating():
            return self._pass(examples, train=False)

    def score(self, requests: Sequence[GenerationRequest]) -> list[float]:
        """R's score for each request (NaN for a request that cannot be encoded, so positions line up)."""
        out = [math.nan] * len(requests)
        good = [i for i, r in enumerate(requests) if check_request(r) is None]
        with self.evaluating():
            for batch in split_micro_batches(good, self.cfg.micro_batch_size):
                scores = self.reward_model.score(self._encode([requests[i] for i in batch]))
                for i, value in zip(batch, scores.float().cpu().tolist()):
                    out[i] = float(value)
        return out

    def export_state(self, merged: bool = False) -> dict[str, torch.Tensor]:
        """The whole reward model (backbone with LoRA merged, plus head): a scorer needs all of it."""
        with self.strategy.gathered_parameters():
            if self.lora:
                state = {f"backbone.{k}": v for k, v in merged_lora_state(self.reward_model.backbone).items()}
                state.update({f"head.{k}": v for k, v in self.reward_model.head.state_dict().items()})
            else:
                state = dict(self.model.state_dict())
            return {n: t.detach().to("cpu").clone() for n, t in state.items()}

    def export_weights(self, merged: bool = True) -> FlatWeights:
        """Full reward-model weights as FlatWeights (never LoRA-only: the head is not an adapter)."""
        return pack_tensors(self.export_state(True), lora_only=False)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Backbone (LoRA merged) as an HF directory plus the head, readable by `RewardModel.from_pretrained`."""
        with self.strategy.gathered_parameters():
            if self.rank == 0:
                self.reward_model.save_pretrained(directory)
        return Path(directory)
