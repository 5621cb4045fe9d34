"""The reward-model learner: MSE regression of R(image, question, answer) onto graded targets.

MedGR²'s reward model is a VLM backbone with a scalar head (`models.reward_head.RewardModel`), trained
on automatically graded data (faithful 10, perturbed 6, incoherent 0, irrelevant -6) and refreshed
each round with the policy's own samples. This learner runs that regression with the same
micro-batching, strategies, export and checkpoints as the policy learner; LoRA (when configured) goes
on the backbone, the head always trains in full.

A verifier head (`RewardObjective.verifier`) adds R's own belief in the stated answer to the score
(`models/verifier.py`); the regression only calibrates its weight, and the answer term (weight
`answer_loss`) trains the belief: -log p of answers that fit their image, -log(1 - p) of perturbed ones.

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
from medgr2_ray.learner.inference import load_reward_model, reward_forward, reward_scores
from medgr2_ray.learner.microbatch import global_sum, reduce_metrics, split_micro_batches, synced_micro_batch_count
from medgr2_ray.learner.trainer import Trainer, merged_lora_state
from medgr2_ray.models.loading import apply_lora
from medgr2_ray.models.processing import check_request
from medgr2_ray.models.reward_head import RewardOutput
from medgr2_ray.types import FlatWeights, GenerationRequest, RewardExample, RewardObjective

REWARD_COUNTS = ("examples_in", "examples_dropped_bad_request", "examples_dropped_bad_target",
                 "examples_dropped_no_sample", "examples_trained")
ANSWER_RIGHT = frozenset({"faithful", "incoherent"})  # graded kinds whose stated answer fits their image
ANSWER_WRONG = frozenset({"perturbed"})  # ... and whose stated answer does not
VERDICT_SUMS = ("answer_nll_sum", "verdict_count", "right_count", "right_prob_sum", "wrong_count", "wrong_prob_sum")



class RewardLearner(Trainer):
    """Trains the reward model R by regression; `score` gives R's predictions for requests."""

    def __init__(
        self, model_dir: str | Path, model_cfg: ModelConfig, learner_cfg: LearnerConfig, seed: int,
        rank: int = 0, world_size: int = 1, local_rank: int | None = None, objective: RewardObjective | None = None,
    ) -> None:
        self.objective = objective or RewardObjective()
        # Seeded inside: identical head and LoRA initialisation on every rank (and in `RewardScorer`).
        reward_model = load_reward_model(model_dir, model_cfg, seed, self.objective)
        if model_cfg.lora.enabled:
            reward_model.backbone = apply_lora(reward_model.backbone, model_cfg.lora)
        self.reward_model = reward_model
        super().__init__(reward_model, learner_cfg, seed, rank, world_size, local_rank)
        self.lora = model_cfg.lora.enabled
        self.eos_id = int(reward_model.loaded.tokenizer.eos_token_id)

    def _forward(self, model: torch.nn.Module, requests: Sequence[GenerationRequest], regress: bool = True
                 ) -> RewardOutput:
        """R on a micro-batch: the rendered samples and, for a verifier, their stated answers
        (`regress=False`: the answers only)."""
        return reward_forward(self.reward_model, model, requests, self.eos_id, self.device, regress)

    def _usable(self, examples: Sequence[RewardExample], counts: Counter[str]) -> list[RewardExample]:
        """Examples that can be trained on; the rest are counted by reason."""
        kept = []
        for example in examples:
            if check_request(example.request) is not None:
                counts["examples_dropped_bad_request"] += 1
            elif self.reward_model.is_verifier and example.request.sample is None:
                counts["examples_dropped_no_sample"] += 1  # a verifier must know the question it answers
            elif not math.isfinite(float(example.target)):
                counts["examples_dropped_bad_target"] += 1
            else:
                kept.append(example)
        return kept

    def _pass(self, examples: Sequence[RewardExample], train: bool, regress: bool = True) -> dict[str, float]:
        """Regression loss plus a verifier's answer term (`regress=False`: the answer term alone), and,
        when training, accumulated gradients, over micro-batches and ranks."""
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
            out = self._forward(model, [e.request for e in batch], regress)
            loss, metrics = torch.zeros((), device=out.score.device), {}
            if regress:
                target = torch.tensor([float(e.target) for e in batch], device=out.score.device)
                loss, metrics = reward_regression_loss(out.score, target, stats["examples_trained"])
                # Per-micro-batch correlation does not aggregate (and may be absent): keep additive metrics.
                metrics = {k: metrics[k] for k in ("loss", "mse", "mae", "pred_mean", "target_mean")}
            if out.verdict is not None:
                answer, answer_metrics = self._answer_term(out, batch, stats["examples_trained"])
                loss = loss + answer
                metrics = {**metrics, **answer_metrics, "loss": float(loss.detach())}
            if train and loss.requires_grad:  # (not for a padding batch without any answer to weigh)
                self.strategy.backward(loss * weight)
            parts.append(metrics)
            weights.append(len(batch) * weight)
        summed = ("loss", *VERDICT_SUMS)
        reduced = reduce_metrics(parts, weights, summed=summed)
        if "verdict_count" in reduced:  # a verifier: mean NLL, mean p(answer) where right and where wrong
            sums = {k: reduced.pop(k) for k in VERDICT_SUMS}
            reduced["answer_nll"] = sums["answer_nll_sum"] / max(sums["verdict_count"], 1.0)
            reduced["p_right"] = sums["right_prob_sum"] / max(sums["right_count"], 1.0)
            reduced["p_wrong"] = sums["wrong_prob_sum"] / max(sums["wrong_count"], 1.0)
        return {**reduced, **stats, "skipped": 0.0}

    def _answer_term(self, out: RewardOutput, batch: Sequence[RewardExample], normalizer: float
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """Verification loss of the verdict: -log p where the stated answer is right for the image (faithful,
        incoherent: only the question's words are scrambled), -log(1 - p) where it is wrong (perturbed).
        Irrelevant examples carry another image, whose answer may or may not be the same: no term."""
        assert out.verdict is not None
        device = out.score.device
        right = torch.tensor([e.kind in ANSWER_RIGHT for e in batch], device=device) & out.verdict.has
        wrong = torch.tensor([e.kind in ANSWER_WRONG for e in batch], device=device) & out.verdict.has
        logp = out.verdict.logprob
        not_p = torch.log1p(-logp.exp().clamp(max=1.0 - 1e-6))
        nll = -(logp * right).sum() - (not_p * wrong).sum()
        prob = out.verdict.prob.detach()
        # sums, reduced over micro-batches and ranks, then turned into means by `_pass`
        metrics = {"answer_nll_sum": float(nll.detach()), "verdict_count": float(right.sum() + wrong.sum()),
                   "right_count": float(right.sum()), "right_prob_sum": float(prob[right].sum()),
                   "wrong_count": float(wrong.sum()), "wrong_prob_sum": float(prob[wrong].sum())}
        return self.objective.answer_loss * nll / normalizer, metrics

    def rm_step(self, examples: Sequence[RewardExample]) -> dict[str, float]:
        """One optimizer step of mean squared error on these graded examples."""
        self.model.train()
        metrics = self._pass(examples, train=True)
        if metrics["skipped"]:
            return {**metrics, "version": float(self.version)}
        return {**metrics, **self._apply_step()}

    def answer_step(self, examples: Sequence[RewardExample]) -> dict[str, float]:
        """One optimizer step of the verifier's answer term alone: an untrained R learns to answer
        (round 0, before grading; in the paper R starts from a VLM that already can)."""
        if not self.reward_model.is_verifier:
            raise ValueError("answer_step needs a verifier head (cycle.rm_verifier) to train")
        self.model.train()
        metrics = self._pass(examples, train=True, regress=False)
        if metrics["skipped"]:
            return {**metrics, "version": float(self.version)}
        return {**metrics, **self._apply_step()}

    def eval_loss(self, examples: Sequence[RewardExample]) -> dict[str, float]:
        """Mean squared error on held-out examples, no update."""
        with self.evaluating():
            return self._pass(examples, train=False)

    def score(self, requests: Sequence[GenerationRequest]) -> list[float]:
        """R's score for each request (NaN for a request that cannot be encoded, or that a verifier cannot
        answer because it carries no sample, so positions line up)."""
        with self.evaluating():
            return reward_scores(self.reward_model, requests, self.eos_id, self.device, self.cfg.micro_batch_size)

    def _export_tensors(self, merged: bool) -> dict[str, torch.Tensor]:
        """The whole reward model (backbone with LoRA merged, plus head), live: a scorer needs all of it.
        Always merged (`merged` is ignored): the head is not an adapter."""
        if self.lora:
            state = {f"backbone.{k}": v for k, v in merged_lora_state(self.reward_model.backbone).items()}
            state.update({f"head.{k}": v for k, v in self.reward_model.head.state_dict().items()})
            return state
        return dict(self.model.state_dict())

    def export_weights(self, merged: bool = True) -> FlatWeights | None:
        """Full reward-model weights as FlatWeights (never LoRA-only: the head is not an adapter).
        Collective, as `Trainer.export_weights`: rank 0 gets the weights, every other rank None."""
        return super().export_weights(merged=True)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Backbone (LoRA merged) as an HF directory plus the head, readable by `RewardModel.from_pretrained`."""
        with self.strategy.gathered_parameters():
            if self.rank == 0:
                self.reward_model.save_pretrained(directory)
        return Path(directory)
