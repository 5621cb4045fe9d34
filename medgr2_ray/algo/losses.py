"""The training objectives: the GRPO policy loss, the SFT loss and the reward model's regression loss.

Each objective is a pure function `(tensors, config) -> (loss, metrics)`: the loss is a scalar that
carries gradients, the metrics are plain floats for logging. No Ray, no models.

GRPO policy loss, per completion token t of sequence i (A_i its group-relative advantage):

    r      = exp(logprob - old_logprob)            importance ratio against the *behaviour* policy
    pg     = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)      PPO clip with clip-higher
    pg     = min(pg, importance_cap * |A|)   when A < 0                 dual clip = truncation
    loss_t = pg + kl_coef * KL_estimator(logprob, ref_logprob)

Why this combination. `old_logprob` is what the rollout engine recorded when it sampled the token,
possibly several weight versions ago (asynchronous loop). The ratio therefore measures both the drift
of this update and the staleness of the rollout. For A > 0 the PPO clip already bounds the objective
by (1 + clip_high) * A, and gives zero gradient beyond it. For A < 0 the PPO objective
max(r, clip(r)) * |A| is *unbounded* in r: one stale token whose probability rose a lot since
rollout would dominate the batch. Truncating it at `importance_cap` (veRL's dual clip, the same bound
as truncated importance sampling) caps every token's weight, and its gradient is zero beyond the cap.
So every token's contribution is bounded by max(1 + clip_high, importance_cap) * |A|.
We do not add a separate detached TIS weight because we keep a single behaviour log-prob per token
(no learner-side recomputation of the old policy); the ratio above *is* that importance weight.

Aggregation (`loss_agg`), with M the completion mask:
    token_mean            sum_{i,t} M l / (number of tokens)                  (DAPO; long answers weigh more)
    seq_mean_token_sum    sum_i (sum_t M l) / (number of sequences)           (Dr. GRPO; no length bias)
    seq_mean_token_mean   sum_i (sum_t M l / |M_i|) / (number of sequences)   (original GRPO)
When gradients accumulate over micro-batches, pass the *global* denominator as `normalizer`
(`loss_normalizer` summed over the micro-batches); then the summed micro-batch losses equal the
full-batch loss exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from medgr2_ray.config import GRPOConfig

LossAgg = Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"]
KLEstimator = Literal["k1", "k2", "k3"]

# exp() of a log-ratio above ~88 overflows float32. Beyond |20| a token is clipped or truncated anyway
# (zero gradient), so clamping the log-ratio there changes no gradient that matters.
_MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class PolicyLossInputs:
    """Per-token tensors of one (micro-)batch of completions for the GRPO loss."""

    logprobs: torch.Tensor  # [B, T] current-policy log-probs of the completion tokens (requires grad)
    old_logprobs: torch.Tensor  # [B, T] behaviour log-probs recorded at rollout time
    advantages: torch.Tensor  # [B] (broadcast over tokens) or [B, T]
    mask: torch.Tensor  # [B, T] 1.0 for completion tokens, 0.0 for padding
    ref_logprobs: torch.Tensor | None = None  # [B, T] reference model, for the KL penalty
    entropy: torch.Tensor | None = None  # [B, T] per-token policy entropy, only logged


def _check_policy_inputs(inp: PolicyLossInputs) -> None:
    """Shapes must agree exactly: broadcasting a wrong shape would silently mix sequences."""
    shape = tuple(inp.logprobs.shape)
    if len(shape) != 2:
        raise ValueError(f"PolicyLossInputs.logprobs must be [batch, tokens], got shape {shape}")
    for name in ("old_logprobs", "mask", "ref_logprobs", "entropy"):
        value = getattr(inp, name)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"PolicyLossInputs.{name} has shape {tuple(value.shape)}, expected {shape} like logprobs")
    adv_shape = tuple(inp.advantages.shape)
    if adv_shape not in ((shape[0],), shape):
        raise ValueError(f"PolicyLossInputs.advantages has shape {adv_shape}; expected ({shape[0]},) or {shape}")


def loss_normalizer(mask: torch.Tensor, loss_agg: LossAgg) -> float:
    """This micro-batch's share of the global denominator: tokens for token_mean, else sequences.

    Sum it over all micro-batches of a step and pass the total as `normalizer`. Sequences without a
    single completion token are not counted (they contribute nothing to the numerator either).
    """
    if loss_agg == "token_mean":
        return float(mask.sum().item())
    return float((mask.sum(dim=-1) > 0).sum().item())


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_agg: LossAgg, normalizer: float | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar with one of the three aggregation modes."""
    mask = mask.to(per_token.dtype)
    if normalizer is None:
        # An all-padding micro-batch has a zero numerator; dividing by 1 keeps the loss 0, not NaN.
        denom = max(loss_normalizer(mask, loss_agg), 1.0)
    elif normalizer > 0:
        denom = float(normalizer)
    else:
        raise ValueError(f"normalizer must be positive, got {normalizer}; sum loss_normalizer() over micro-batches")
    if loss_agg == "token_mean":
        return (per_token * mask).sum() / denom
    seq_sum = (per_token * mask).sum(dim=-1)
    if loss_agg == "seq_mean_token_sum":
        return seq_sum.sum() / denom
    if loss_agg == "seq_mean_token_mean":
        return (seq_sum / mask.sum(dim=-1).clamp(min=1.0)).sum() / denom
    raise ValueError(f"unknown loss_agg '{loss_agg}'; use token_mean, seq_mean_token_sum or seq_mean_token_mean")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi (Schulman 2020).

    k1 = log(pi/pi_ref)                      unbiased, high variance, can be negative
    k2 = 0.5 * log(pi/pi_ref)^2              biased, low variance; its gradient is the KL gradient
    k3 = pi_ref/pi - 1 - log(pi_ref/pi)      unbiased, low variance, always >= 0 (GRPO's choice)
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        neg = (-log_ratio).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"unknown KL estimator '{estimator}'; use k1, k2 or k3")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over masked positions as a float (0.0 when there are none)."""
    count = float(mask.sum().item())
    return float((values * mask).sum().item() / count) if count > 0 else 0.0


def _policy_metrics(
    ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, cfg: GRPOConfig
) -> dict[str, float]:
    """Clip/truncation fractions and ratio statistics over the completion tokens."""
    valid = mask > 0
    low = (adv < 0) & (ratio < 1.0 - cfg.clip_low)
    high = (adv > 0) & (ratio > 1.0 + cfg.clip_high)
    truncated = (adv < 0) & (ratio > cfg.importance_cap)
    m = mask.to(ratio.dtype)
    any_valid = bool(valid.any())
    return {
        "clip_frac_low": _masked_mean(low.to(ratio.dtype), m),
        "clip_frac_high": _masked_mean(high.to(ratio.dtype), m),
        "clip_frac": _masked_mean((low | high).to(ratio.dtype), m),
        "truncated_frac": _masked_mean(truncated.to(ratio.dtype), m),
        "ratio_mean": _masked_mean(ratio, m),
        "ratio_max": float(ratio[valid].max().item()) if any_valid else 0.0,
        "ratio_min": float(ratio[valid].min().item()) if any_valid else 0.0,
        "tokens": float(m.sum().item()),
    }


def grpo_loss(
    inp: PolicyLossInputs, cfg: GRPOConfig, normalizer: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped, truncated GRPO policy loss (+ KL penalty) and its metrics; see the module docstring.

    `normalizer`: the global denominator when gradients accumulate over micro-batches (total tokens
    for token_mean, total non-empty sequences for the seq-mean modes); None = this micro-batch's own.
    """
    _check_policy_inputs(inp)
    if cfg.kl_coef > 0 and inp.ref_logprobs is None:
        raise ValueError("grpo.kl_coef > 0 needs ref_logprobs (reference-model log-probs); pass them or set kl_coef=0")
    mask = inp.mask.to(inp.logprobs.dtype)
    valid = mask > 0
    # Padding may hold anything an engine wrote there (-inf, NaN); zero it *before* any arithmetic,
    # because 0 * NaN is NaN and would poison the gradient of the whole batch.
    logprobs = torch.where(valid, inp.logprobs, torch.zeros_like(inp.logprobs))
    adv = inp.advantages.to(logprobs.dtype)
    adv = adv.unsqueeze(-1).expand_as(logprobs) if adv.dim() == 1 else adv
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    old = torch.where(valid, inp.old_logprobs.to(logprobs.dtype).detach(), torch.zeros_like(logprobs))
    ratio = torch.exp((logprobs - old).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = -torch.min(ratio * adv, clipped * adv)
    # Dual clip: for negative advantages the PPO objective grows with r without bound; truncate.
    pg = torch.where(adv < 0, torch.min(pg, -adv * cfg.importance_cap), pg)
    per_token = pg
    metrics = _policy_metrics(ratio.detach(), adv, mask, cfg)
    if inp.ref_logprobs is not None:
        ref = torch.where(valid, inp.ref_logprobs.to(logprobs.dtype).detach(), torch.zeros_like(logprobs))
        kl = kl_penalty(logprobs, ref, cfg.kl_estimator)
        metrics["kl"] = _masked_mean(kl.detach(), mask)
        if cfg.kl_coef > 0:
            per_token = pg + cfg.kl_coef * kl
    if inp.entropy is not None:
        entropy = torch.where(valid, inp.entropy.detach().to(mask.dtype), torch.zeros_like(mask))
        metrics["entropy"] = _masked_mean(entropy, mask)
    loss = aggregate(per_token, mask, cfg.loss_agg, normalizer)
    metrics["pg_loss"] = float(aggregate(pg.detach(), mask, cfg.loss_agg, normalizer).item())
    metrics["loss"] = float(loss.detach().item())
    return loss, metrics


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, normalizer: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy over the positions `loss_mask` marks (the target completion).

    logits [B, L, V] and labels [B, L] are aligned with the model inputs: position t's logits predict
    token t+1, so the shift happens here, and `loss_mask[:, t+1]` says whether token t+1 is trained on
    (0 for prompt, image and padding tokens). The loss is the mean over trained tokens, or the sum over
    `normalizer` (total trained tokens of all micro-batches) when gradients accumulate.
    """
    if logits.dim() != 3 or tuple(labels.shape) != tuple(logits.shape[:2]) or labels.shape != loss_mask.shape:
        raise ValueError(
            f"sft_loss needs logits [B, L, V] and labels, loss_mask [B, L]; got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}, {tuple(loss_mask.shape)}"
        )
    pred = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = loss_mask[:, 1:].to(pred.dtype)
    # Masked positions may hold pad or -100 labels; any valid id keeps cross_entropy happy there.
    safe_target = torch.where(mask > 0, target, torch.zeros_like(target))
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), safe_target.reshape(-1), reduction="none")
    nll = nll.view_as(mask)
    tokens = float(mask.sum().item())
    loss = aggregate(nll, mask, "token_mean", normalizer)
    correct = (pred.detach().argmax(dim=-1) == target).to(mask.dtype)
    metrics = {
        "loss": float(loss.detach().item()),
        "nll": _masked_mean(nll.detach(), mask),
        "token_accuracy": _masked_mean(correct, mask),
        "tokens": tokens,
    }
    return loss, metrics


def reward_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, normalizer: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error between the reward head's scalar predictions and the graded targets.

    pred and target are [B] (a trailing singleton dimension of pred is squeezed). With `normalizer`
    (total examples of all micro-batches) the loss is the sum over it, for gradient accumulation.
    """
    if pred.dim() == 2 and pred.shape[-1] == 1:
        pred = pred.squeeze(-1)
    if pred.dim() != 1 or tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"reward_regression_loss needs pred and target of shape [B]; got {tuple(pred.shape)}, {tuple(target.shape)}")
    if normalizer is not None and normalizer <= 0:
        raise ValueError(f"normalizer must be positive, got {normalizer}; pass the total number of examples")
    target = target.to(pred.dtype).detach()
    sq = (pred - target).square()
    denom = max(float(pred.shape[0]), 1.0) if normalizer is None else float(normalizer)
    loss = sq.sum() / denom
    p, t = pred.detach(), target
    metrics = {
        "loss": float(loss.detach().item()),
        "mse": float(sq.detach().mean().item()) if p.numel() else 0.0,
        "mae": float((p - t).abs().mean().item()) if p.numel() else 0.0,
        "pred_mean": float(p.mean().item()) if p.numel() else 0.0,
        "target_mean": float(t.mean().item()) if t.numel() else 0.0,
    }
    if p.numel() > 1 and float(p.std()) > 0 and float(t.std()) > 0:
        metrics["pearson"] = float(torch.corrcoef(torch.stack([p, t]))[0, 1].item())
    return loss, metrics
