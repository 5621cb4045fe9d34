"""The training objectives: the GRPO policy loss, the SFT loss and the reward model's regression loss.

Each objective is a pure function `(tensors, config) -> (loss, metrics)`: the loss is a scalar that
carries gradients, the metrics are plain floats for logging. No Ray, no models.

Three policies meet in an asynchronous GRPO step, for each completion token t of sequence i:
    pi_behav  the rollout engine's weights when it sampled the token (`old_logprobs`, recorded by the
              engine; up to `grpo.max_staleness` versions behind the learner);
    pi_prox   the learner's weights at the start of this step (the *proximal* policy);
    pi_theta  the weights being optimized (`logprobs`, carries gradients).
A_i is the group-relative advantage. Both objectives share the PPO clip with clip-higher and a dual
clip for negative advantages:

    ppo(r, A) = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)
    ppo(r, A) = min(ppo(r, A), importance_cap * |A|)   when A < 0                 (dual clip)

Behaviour-clipped PPO (`grpo.proximal_clip = false`, the objective of PPO/GRPO as usually written):

    loss_t = ppo(pi_theta / pi_behav, A)

Decoupled PPO (`grpo.proximal_clip = true`; Fu et al. 2025, AReaL, "decoupled PPO objective"; veRL
and slime's truncated importance sampling with a proximal policy):

    w      = min(pi_prox / pi_behav, importance_cap)        detached: a weight, not a gradient path
    loss_t = w * ppo(pi_theta / pi_prox, A)

Why two. The clip exists to keep *this update* inside a trust region around the policy it starts
from. Behaviour-clipped PPO measures the ratio against pi_behav, so with a stale rollout the ratio
measures staleness plus drift: a positive-advantage token whose probability rose since the rollout by
more than 1 + clip_high sits in the clipped region *before this update has moved anything* and gets
zero gradient; a negative one that fell below 1 - clip_low likewise. The asynchronous loop, where
almost every group is one version stale, therefore learns from a shrinking share of its tokens, the
more so the larger the learning rate. The decoupled objective splits the two roles: the clip is
measured against pi_prox (the trust region of this update only), and the off-policy correction is
the importance weight pi_prox / pi_behav, truncated at `importance_cap` (truncated IS: bounded
variance, bias only on the truncated tokens), detached so it rescales the gradient without being
optimized. Every token's contribution stays bounded, by importance_cap * max(1 + clip_high,
importance_cap) * |A|. (AReaL drops the tokens whose weight exceeds its cap; we truncate them, like
veRL/slime's TIS, so a very stale token still pushes in its advantage's direction, at bounded weight.)

With max_staleness = 0 the two coincide up to engine-vs-learner numerics: pi_prox = pi_behav, w = 1.

The learner takes one optimizer step per GRPO batch, so pi_prox is the current forward's log-probs,
detached (`PolicyLossInputs.proximal_logprobs = None`): no extra forward pass. Then the proximal
ratio is exactly 1 in value, the clip never binds, and the gradient is plain policy gradient with
truncated importance weights, -w * A * grad log pi_theta. A caller that takes several optimizer
steps per batch must pass the log-probs of the first forward, computed before any update, as
`proximal_logprobs`.

KL penalty, when kl_coef > 0 (both objectives): loss_t += kl_coef * KL_estimator(logprob, ref_logprob).

Aggregation (`loss_agg`), with M the completion mask:
    token_mean            sum_{i,t} M l / (number of tokens)                  (DAPO; long answers weigh more)
    seq_mean_token_sum    sum_i (sum_t M l) / (number of sequences)           (Dr. GRPO; no length bias)
    seq_mean_token_mean   sum_i (sum_t M l / |M_i|) / (number of sequences)   (original GRPO)
When gradients accumulate over micro-batches, pass the *global* denominator as `normalizer`
(`loss_normalizer` summed over the micro-batches); then the summed micro-batch losses equal the
full-batch loss exactly.

Metrics. clip_frac(_low/_high), truncated_frac (dual clip) and ratio_* describe the ratio the clip
acts on: pi_theta / pi_behav (behaviour-clipped) or pi_theta / pi_prox (decoupled). behaviour_* describe
pi_prox / pi_behav in both modes (how stale the rollouts are): behaviour_weight_mean/max the truncated
weight, behaviour_ratio_max before truncation, behaviour_capped_frac the share truncated. In the
decoupled mode they are the weights applied; in the behaviour-clipped mode a diagnostic.
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
    # [B, T] proximal-policy log-probs (the weights at the start of this step). None: `logprobs`
    # detached, right when the batch gets one optimizer step (see the module docstring).
    proximal_logprobs: torch.Tensor | None = None


def _check_policy_inputs(inp: PolicyLossInputs) -> None:
    """Shapes must agree exactly: broadcasting a wrong shape would silently mix sequences."""
    shape = tuple(inp.logprobs.shape)
    if len(shape) != 2:
        raise ValueError(f"PolicyLossInputs.logprobs must be [batch, tokens], got shape {shape}")
    for name in ("old_logprobs", "mask", "ref_logprobs", "entropy", "proximal_logprobs"):
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
    """Clip/truncation fractions and statistics of the ratio the PPO clip acts on."""
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


def _behaviour_metrics(behaviour_ratio: torch.Tensor, mask: torch.Tensor, cfg: GRPOConfig) -> dict[str, float]:
    """Statistics of pi_prox / pi_behav: the staleness correction (applied only when proximal_clip)."""
    valid = mask > 0
    m = mask.to(behaviour_ratio.dtype)
    weight = behaviour_ratio.clamp(max=cfg.importance_cap)
    any_valid = bool(valid.any())
    return {
        "behaviour_weight_mean": _masked_mean(weight, m),
        "behaviour_weight_max": float(weight[valid].max().item()) if any_valid else 0.0,
        "behaviour_ratio_max": float(behaviour_ratio[valid].max().item()) if any_valid else 0.0,
        "behaviour_capped_frac": _masked_mean((behaviour_ratio > cfg.importance_cap).to(m.dtype), m),
    }


def _ppo_clipped(ratio: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    """Per-token PPO loss with clip-higher, plus the dual clip that bounds negative advantages."""
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = -torch.min(ratio * adv, clipped * adv)
    # Dual clip: for negative advantages the PPO objective grows with r without bound; truncate.
    # Strictly above the bound only: torch.min splits the gradient of a tie in half, and a tie is the
    # rule, not the exception, at r = 1 with importance_cap = 1 (the decoupled objective's one step).
    bound = -adv * cfg.importance_cap
    return torch.where((adv < 0) & (pg > bound), bound, pg)


def _log_ratio_exp(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """exp(num - den), the log-ratio clamped so float32 cannot overflow."""
    return torch.exp((num - den).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))


def _masked(values: torch.Tensor | None, valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """`values` as `like`'s dtype, detached, with padding zeroed (engines may write -inf/NaN there)."""
    if values is None:
        return None
    return torch.where(valid, values.to(like.dtype).detach(), torch.zeros_like(like))


def _policy_gradient_term(
    logprobs: torch.Tensor, old: torch.Tensor, proximal: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    cfg: GRPOConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token policy loss of the configured objective (decoupled or behaviour-clipped) and its metrics."""
    behaviour_ratio = _log_ratio_exp(proximal, old)  # detached: both inputs are
    if cfg.proximal_clip:
        ratio = _log_ratio_exp(logprobs, proximal)
        pg = behaviour_ratio.clamp(max=cfg.importance_cap) * _ppo_clipped(ratio, adv, cfg)
    else:
        ratio = _log_ratio_exp(logprobs, old)
        pg = _ppo_clipped(ratio, adv, cfg)
    metrics = {**_policy_metrics(ratio.detach(), adv, mask, cfg), **_behaviour_metrics(behaviour_ratio, mask, cfg)}
    return pg, metrics


def grpo_loss(
    inp: PolicyLossInputs, cfg: GRPOConfig, normalizer: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO policy loss (+ KL penalty) and its metrics: decoupled PPO when `cfg.proximal_clip`,
    else PPO clipped against the behaviour policy; see the module docstring.

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
    old = _masked(inp.old_logprobs, valid, logprobs)
    proximal = _masked(inp.proximal_logprobs if inp.proximal_logprobs is not None else logprobs, valid, logprobs)
    assert old is not None and proximal is not None
    pg, metrics = _policy_gradient_term(logprobs, old, proximal, adv, mask, cfg)
    per_token = pg
    ref = _masked(inp.ref_logprobs, valid, logprobs)
    if ref is not None:
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
