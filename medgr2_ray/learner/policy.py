"""The policy learner: GRPO and SFT steps on a VLM (full or LoRA), with a KL reference when asked.

GRPO step, for the scored groups one rank receives:
1. groups whose rewards are malformed (wrong length, NaN) are dropped and counted, never trained on;
2. dynamic sampling (when on) drops groups whose rewards are all equal: their advantages are zero;
3. advantages are group-relative (`algo.group_advantages`), one per completion, broadcast over tokens;
4. rows go through the model `micro_batch_size` at a time; each micro-batch loss is `algo.grpo_loss`
   with the behaviour log-probs recorded by the engine (`Rollout.logprobs`), which correct for stale
   rollouts, and with the global token/sequence count as normaliser, so the accumulated gradient
   equals the full-batch gradient. With `grpo.proximal_clip` (decoupled PPO) the proximal policy is
   the current forward's log-probs detached: every micro-batch's forward runs before the step's one
   optimizer update, so they are the weights at the start of the step, with no extra forward pass
   (several updates per batch would have to keep the first forward's log-probs instead);
5. the KL reference is the same network with LoRA disabled when training LoRA (no second copy),
   else a frozen copy made at start-up; it exists only when `kl_coef > 0`.

Dropout is off (eval mode) during GRPO: the learner must score tokens with the same function the
engine sampled them from, or the importance ratio is biased. SFT trains in train mode.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medgr2_ray.algo.advantages import filter_informative_groups, group_advantages
from medgr2_ray.algo.losses import PolicyLossInputs, grpo_loss, loss_normalizer, sft_loss
from medgr2_ray.config import GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.models.logprobs import forward_tail, shared_prompt_logprobs
from medgr2_ray.learner.inference import score_completion_rows, target_token_ids
from medgr2_ray.learner.microbatch import global_sum, reduce_metrics, split_micro_batches, synced_micro_batch_count
from medgr2_ray.learner.trainer import Trainer
from medgr2_ray.models.loading import LoadedVLM, apply_lora, load_vlm
from medgr2_ray.models.processing import (
    PromptCompletions,
    check_request,
    encode_prompt_completions,
    encode_shared_prompt_completions,
)
from medgr2_ray.types import GenerationRequest, ScoredGroup, SFTExample


# What a GRPO step counts (summed over ranks): nothing is dropped without showing up here.
GRPO_COUNTS = (
    "groups_in", "groups_trained", "groups_dropped_uniform", "groups_dropped_bad_request", "groups_dropped_rewards_mismatch",
    "groups_dropped_rewards_nonfinite", "rollouts_dropped_empty", "rollouts_dropped_bad_logprobs",
    "rollouts_dropped_vision_token", "rows",
)


# grpo_loss metrics that reduce by maximum over micro-batches and ranks (all others: token-weighted mean).
_MAXED_METRICS = ("ratio_max", "behaviour_weight_max", "behaviour_ratio_max")


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class PolicyRow:
    """One completion to learn from: its prompt, tokens, behaviour log-probs and advantage."""

    request: GenerationRequest
    completion: tuple[int, ...]
    old_logprobs: np.ndarray  # float32 [len(completion)]
    advantage: float


@dataclass(frozen=True)
class TokenRow:
    """A prompt and the completion tokens to score or imitate (SFT, evaluation)."""

    request: GenerationRequest
    completion: tuple[int, ...]


def _group_problem(group: ScoredGroup) -> str | None:
    """Why a group cannot be trained on, or None when it is well-formed."""
    if check_request(group.request) is not None:
        return "bad_request"
    rewards = np.asarray(group.rewards, dtype=np.float64).reshape(-1)
    if len(rewards) != len(group.rollouts):
        return "rewards_mismatch"
    if not np.isfinite(rewards).all():
        return "rewards_nonfinite"
    return None


class PolicyLearner(Trainer):
    """GRPO / SFT learner for the solver policy (and the generator's rejection-sampling fine-tuning)."""

    def __init__(
        self, model_dir: str | Path, model_cfg: ModelConfig, learner_cfg: LearnerConfig, grpo_cfg: GRPOConfig,
        seed: int, rank: int = 0, world_size: int = 1, local_rank: int | None = None,
    ) -> None:
        # Every rank seeds identically: LoRA's random A matrices must start equal on all ranks.
        torch.manual_seed(seed)
        self.loaded: LoadedVLM = load_vlm(model_dir, model_cfg.dtype, model_cfg.trust_remote_code)
        model: torch.nn.Module = self.loaded.model
        self.grpo = grpo_cfg
        self.ref_model: torch.nn.Module | None = None
        if grpo_cfg.kl_coef > 0 and not model_cfg.lora.enabled:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        if model_cfg.lora.enabled:
            model = apply_lora(model, model_cfg.lora)
        super().__init__(model, learner_cfg, seed, rank, world_size, local_rank)
        if self.ref_model is not None:
            self.ref_model.to(self.device)
        tok = self.loaded.tokenizer
        self.eos_id = int(tok.eos_token_id)
        # A sampled vision placeholder cannot be re-encoded as completion text (the M-RoPE index would
        # expect an image for it): such rollouts are dropped and counted, never a crash mid-run.
        vocab = tok.get_vocab()
        self.vision_ids = frozenset(int(vocab[t]) for t in VISION_TOKENS if t in vocab)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the current policy as an ordinary Hugging Face model directory (LoRA merged in), with
        its tokenizer and image processor: the next stage (SFT -> GRPO, a new generator round) and the
        engines start from it. Rank 0 writes; all ranks call it together under ZeRO-3."""
        out = Path(directory)
        with self.strategy.gathered_parameters():
            if self.rank == 0:
                model = self.model
                if self.lora:
                    model = copy.deepcopy(self.model).merge_and_unload()
                out.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(out, safe_serialization=True)
                self.loaded.tokenizer.save_pretrained(out)
                self.loaded.image_processor.save_pretrained(out)
        return out

    # ------------------------------------------------------------ encoding

    def target_token_ids(self, text: str) -> tuple[int, ...]:
        """Completion tokens for a target text: the text, then end-of-turn (so the model learns to stop)."""
        return target_token_ids(self.loaded, self.eos_id, text)

    def _encode(self, requests: Sequence[GenerationRequest], completions: Sequence[Sequence[int]]):  # noqa: ANN202
        """Teacher-forcing inputs, left-padded so every completion ends at the last position."""
        inputs, mask = encode_prompt_completions(self.loaded, requests, completions, padding_side="left")
        return inputs.to(self.device), mask.to(self.device)

    def score_completions(
        self, requests: Sequence[GenerationRequest], completions: Sequence[Sequence[int]], temperature: float | None = None
    ) -> list[np.ndarray]:
        """Current-policy log-probs of given completion tokens (no grad, eval mode), one array per row.

        `temperature` defaults to the GRPO sampling temperature: the same distribution the engine reports.
        """
        temp = self.grpo.temperature if temperature is None else temperature
        with self.evaluating():
            return score_completion_rows(self.model, self.loaded, self.device, requests, completions, temp,
                                         self.cfg.micro_batch_size)

    def _padding_row(self) -> PolicyRow:
        """A one-token row for zero-weight padding micro-batches (ranks must run equal backwards)."""
        return PolicyRow(GenerationRequest("__padding__", "padding"), (self.eos_id,), np.zeros(1, np.float32), 0.0)

    # ------------------------------------------------------------ GRPO

    def policy_rows(self, groups: Sequence[ScoredGroup], counts: Counter[str]) -> list[PolicyRow]:
        """Validate groups, apply dynamic sampling, compute advantages; count everything dropped."""
        valid: list[ScoredGroup] = []
        for group in groups:
            problem = _group_problem(group)
            if problem is None:
                valid.append(group)
            else:
                counts[f"groups_dropped_{problem}"] += 1
        if self.grpo.dynamic_sampling:
            sampled = filter_informative_groups(valid)
            counts["groups_dropped_uniform"] += sampled.num_dropped
            valid = list(sampled.kept)
        rows: list[PolicyRow] = []
        for group in valid:
            rewards = torch.as_tensor(np.asarray(group.rewards, dtype=np.float32)).reshape(1, -1)
            advantages = group_advantages(rewards, self.grpo.scale_by_std)[0].tolist()
            for rollout, adv in zip(group.rollouts, advantages):
                old = np.asarray(rollout.logprobs, dtype=np.float32).reshape(-1)
                if not rollout.completion_token_ids:
                    counts["rollouts_dropped_empty"] += 1
                elif len(old) != len(rollout.completion_token_ids) or not np.isfinite(old).all():
                    counts["rollouts_dropped_bad_logprobs"] += 1
                elif self.vision_ids.intersection(rollout.completion_token_ids):
                    counts["rollouts_dropped_vision_token"] += 1
                else:
                    rows.append(PolicyRow(group.request, tuple(rollout.completion_token_ids), old, float(adv)))
        counts["groups_trained"] += len(valid)
        return rows

    def _ref_logprobs(self, batch: PromptCompletions) -> torch.Tensor | None:
        """Reference-policy log-probs for the KL penalty (None when kl_coef is 0)."""
        if self.grpo.kl_coef <= 0:
            return None
        with torch.no_grad():
            if self.lora:
                with self.model.disable_adapter():
                    return shared_prompt_logprobs(self.model, batch, self.grpo.temperature)[0]
            assert self.ref_model is not None
            return shared_prompt_logprobs(self.ref_model, batch, self.grpo.temperature)[0]

    def _policy_micro_step(self, rows: Sequence[PolicyRow], normalizer: float, weight: float) -> dict[str, float]:
        """Forward + backward of one micro-batch; returns grpo_loss's metrics."""
        # A group's rows share one request object: its prompt is run once (models/logprobs.py).
        batch = encode_shared_prompt_completions(self.loaded, [r.request for r in rows],
                                                 [r.completion for r in rows]).to(self.device)
        logprobs, entropy = shared_prompt_logprobs(self.strategy.module, batch, self.grpo.temperature)
        old = torch.zeros_like(logprobs)
        for i, row in enumerate(rows):
            old[i, : len(row.old_logprobs)] = torch.from_numpy(row.old_logprobs)
        token_mask = batch.completion_mask.to(logprobs.dtype)
        advantages = torch.tensor([r.advantage for r in rows], dtype=logprobs.dtype, device=logprobs.device)
        inp = PolicyLossInputs(logprobs, old, advantages, token_mask, self._ref_logprobs(batch), entropy)
        loss, metrics = grpo_loss(inp, self.grpo, normalizer)
        self.strategy.backward(loss * weight)
        return metrics

    def grpo_step(self, groups: Sequence[ScoredGroup]) -> dict[str, float]:
        """One GRPO optimizer step on these groups (all ranks call it together with their own groups)."""
        metrics = self.accumulate_grpo(groups)
        if metrics["skipped"]:
            return {**metrics, "version": float(self.version)}
        return {**metrics, **self._apply_step()}

    def accumulate_grpo(self, groups: Sequence[ScoredGroup]) -> dict[str, float]:
        """Forward/backward of every micro-batch, gradients left accumulated (no optimizer step).

        `skipped` is 1 when no rank had a trainable token: then nothing was accumulated.
        """
        counts: Counter[str] = Counter()
        rows = self.policy_rows(groups, counts)
        mean_reward = [float(np.mean(g.rewards)) for g in groups if _group_problem(g) is None]
        lengths = [len(r.completion) for r in rows]
        mask = torch.zeros(len(rows), max(lengths, default=1))
        for i, n in enumerate(lengths):
            mask[i, :n] = 1.0
        local_norm = loss_normalizer(mask, self.grpo.loss_agg) if rows else 0.0
        counts["groups_in"], counts["rows"] = len(groups), len(rows)
        unknown = set(counts) - set(GRPO_COUNTS)
        assert not unknown, f"uncounted GRPO statistics {unknown}"  # ranks must reduce one fixed key list
        totals = global_sum([local_norm, sum(mean_reward), len(mean_reward), *[counts[k] for k in GRPO_COUNTS]])
        stats = dict(zip(GRPO_COUNTS, totals[3:]))
        stats["reward_mean"] = totals[1] / totals[2] if totals[2] > 0 else 0.0
        if totals[0] <= 0:  # no rank has anything to learn from: skip the step everywhere
            return {**stats, "skipped": 1.0}
        self.model.eval()
        micro = split_micro_batches(rows, self.cfg.micro_batch_size)
        parts, weights = [], []
        for i in range(synced_micro_batch_count(len(micro))):
            batch, weight = (micro[i], 1.0) if i < len(micro) else ([self._padding_row()], 0.0)
            metrics = self._policy_micro_step(batch, totals[0], weight)
            parts.append(metrics)
            weights.append(metrics["tokens"] * weight)
        out = reduce_metrics(parts, weights, summed=("loss", "pg_loss", "tokens"), maxed=_MAXED_METRICS)
        return {**out, **stats, "skipped": 0.0}

    # ------------------------------------------------------------ SFT

    def _token_rows(self, examples: Sequence[SFTExample]) -> tuple[list[TokenRow], int]:
        """(rows to train on, number of examples dropped because their request cannot be encoded)."""
        usable = [e for e in examples if check_request(e.request) is None]
        return [TokenRow(e.request, self.target_token_ids(e.target)) for e in usable], len(examples) - len(usable)

    def _sft_micro(self, rows: Sequence[TokenRow], normalizer: float, model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """sft_loss over one micro-batch, on the logits of the completion window only."""
        inputs, mask = self._encode([r.request for r in rows], [r.completion for r in rows])
        tail = forward_tail(model, inputs, mask)
        labels = inputs.input_ids[:, tail.start :]
        return sft_loss(tail.logits, labels, mask[:, tail.start :].float(), normalizer)

    def _sft_pass(self, rows: Sequence[TokenRow], dropped: int, train: bool) -> dict[str, float]:
        """Accumulate SFT gradients (train) or just losses over all micro-batches and ranks."""
        total, dropped_all = global_sum([sum(len(r.completion) for r in rows), dropped])
        if total <= 0:
            return {"loss": 0.0, "tokens": 0.0, "examples_dropped_bad_request": dropped_all, "skipped": 1.0}
        micro = split_micro_batches(rows, self.cfg.micro_batch_size)
        parts, weights = [], []
        model = self.strategy.module if train else self.model
        pad = TokenRow(GenerationRequest("__padding__", "padding"), (self.eos_id,))
        for i in range(synced_micro_batch_count(len(micro))):
            batch, weight = (micro[i], 1.0) if i < len(micro) else ([pad], 0.0)
            loss, metrics = self._sft_micro(batch, total, model)
            if train:
                self.strategy.backward(loss * weight)
            parts.append(metrics)
            weights.append(metrics["tokens"] * weight)
        metrics = reduce_metrics(parts, weights, summed=("loss", "tokens"))
        return {**metrics, "examples_dropped_bad_request": dropped_all}

    def sft_step(self, examples: Sequence[SFTExample]) -> dict[str, float]:
        """One optimizer step of next-token cross-entropy on the targets (mean over all target tokens)."""
        self.model.train()
        metrics = self._sft_pass(*self._token_rows(examples), train=True)
        if metrics.get("skipped"):
            return {**metrics, "version": float(self.version)}
        return {**metrics, **self._apply_step(), "skipped": 0.0}

    def eval_loss(self, examples: Sequence[SFTExample]) -> dict[str, float]:
        """Mean per-token cross-entropy of the targets, no update (for held-out evaluation)."""
        with self.evaluating():
            return self._sft_pass(*self._token_rows(examples), train=False)
