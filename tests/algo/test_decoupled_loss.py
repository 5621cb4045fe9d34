"""Decoupled PPO (grpo.proximal_clip): clip against the proximal policy, weight by the truncated
behaviour ratio pi_prox / pi_behav. Hand-computed gradients, equality with the behaviour-clipped
objective when behaviour == proximal, and the stale tokens it gives gradient to that the old one drops."""

from __future__ import annotations

import math

import pytest
import torch

from medgr2_ray.algo.losses import PolicyLossInputs, grpo_loss
from medgr2_ray.config import GRPOConfig

torch.set_num_threads(1)
AGGS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")


def _stale_batch(ratios: list[float], advantages: list[float]) -> tuple[torch.Tensor, PolicyLossInputs]:
    """One sequence whose tokens' pi_theta / pi_behav are `ratios` (the behaviour log-probs are 0)."""
    lp = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    inp = PolicyLossInputs(logprobs=lp, old_logprobs=torch.zeros_like(lp), advantages=torch.tensor([advantages]),
                           mask=torch.ones_like(lp))
    return lp, inp


def _grad(inp: PolicyLossInputs, lp: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    lp.grad = None
    loss, _ = grpo_loss(inp, cfg)
    loss.backward()
    assert lp.grad is not None
    return lp.grad.clone()


def test_gradient_is_policy_gradient_with_truncated_importance_weights_by_hand() -> None:
    # pi_theta / pi_behav per token; one step per batch, so pi_prox = pi_theta and w = min(ratio, cap).
    # d loss / d logprob_t = -min(ratio_t, cap) * A_t / tokens (token_mean over 5 tokens).
    ratios = [1.5, 0.5, 3.0, 1.0, 0.9]
    adv = [1.0, 1.0, 2.0, -1.0, -0.5]
    lp, inp = _stale_batch(ratios, adv)
    cfg = GRPOConfig(loss_agg="token_mean", importance_cap=2.0, proximal_clip=True)
    loss, m = grpo_loss(inp, cfg)
    weights = [1.5, 0.5, 2.0, 1.0, 0.9]
    assert loss.item() == pytest.approx(-sum(w * a for w, a in zip(weights, adv)) / 5)
    loss.backward()
    want = torch.tensor([[-w * a / 5 for w, a in zip(weights, adv)]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, want)
    # The clip acts on pi_theta / pi_prox = 1: nothing is clipped; the weights show the staleness.
    assert m["clip_frac"] == 0.0 and m["truncated_frac"] == 0.0 and m["ratio_max"] == pytest.approx(1.0)
    assert m["behaviour_weight_mean"] == pytest.approx(sum(weights) / 5)
    assert m["behaviour_weight_max"] == pytest.approx(2.0) and m["behaviour_ratio_max"] == pytest.approx(3.0)
    assert m["behaviour_capped_frac"] == pytest.approx(1 / 5)


@pytest.mark.parametrize("agg", AGGS)
def test_equals_behaviour_clipped_objective_when_behaviour_is_proximal(agg: str) -> None:
    """max_staleness=0: pi_behav = pi_prox, so w = 1 and both objectives give the same loss and gradient."""
    g = torch.Generator().manual_seed(3)
    lp0 = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    mask = (torch.rand(4, 6, generator=g) > 0.2).double()
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    ref = lp0 + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    out = {}
    for prox in (True, False):
        lp = lp0.clone().requires_grad_(True)
        inp = PolicyLossInputs(logprobs=lp, old_logprobs=lp0.clone(), advantages=adv, mask=mask, ref_logprobs=ref)
        loss, m = grpo_loss(inp, GRPOConfig(loss_agg=agg, kl_coef=0.05, proximal_clip=prox))
        loss.backward()
        out[prox] = (loss.item(), lp.grad, m)
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-12)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-12, atol=1e-12)
    assert out[True][2]["behaviour_weight_max"] == pytest.approx(1.0)


def test_stale_tokens_the_behaviour_clip_drops_get_gradient() -> None:
    """A rewarded token that rose 1.5x since the rollout, a penalised one that fell to 0.5x: the
    behaviour-clipped objective gives both zero gradient, the decoupled one pushes both, weighted."""
    lp, inp = _stale_batch([1.5, 0.5], [1.0, -1.0])
    old_grad = _grad(inp, lp, GRPOConfig(loss_agg="seq_mean_token_sum", proximal_clip=False))
    new_grad = _grad(inp, lp, GRPOConfig(loss_agg="seq_mean_token_sum", proximal_clip=True))
    torch.testing.assert_close(old_grad, torch.zeros_like(old_grad))
    torch.testing.assert_close(new_grad, torch.tensor([[-1.5, 0.5]], dtype=torch.float64))
    descent = -new_grad
    assert descent[0, 0] > 0 and descent[0, 1] < 0  # up for the rewarded token, down for the penalised


@pytest.mark.parametrize("cap", (1.0, 2.0, 5.0))
def test_truncation_caps_the_behaviour_weight(cap: float) -> None:
    lp, inp = _stale_batch([8.0, 8.0], [1.0, -1.0])
    cfg = GRPOConfig(loss_agg="seq_mean_token_sum", importance_cap=cap, proximal_clip=True)
    grad = _grad(inp, lp, cfg)
    torch.testing.assert_close(grad, torch.tensor([[-cap, cap]], dtype=torch.float64))
    _, m = grpo_loss(inp, cfg)
    assert m["behaviour_weight_max"] == pytest.approx(cap) and m["behaviour_ratio_max"] == pytest.approx(8.0)
    assert m["behaviour_capped_frac"] == 1.0


def test_explicit_proximal_log_probs_clip_this_updates_drift() -> None:
    """Several updates per batch: the clip acts on pi_theta / pi_prox with the given proximal log-probs."""
    prox = torch.zeros(1, 3, dtype=torch.float64)
    old = torch.tensor([[math.log(1 / 1.5)] * 3], dtype=torch.float64)  # w = 1.5 on every token
    lp = torch.log(torch.tensor([[1.5, 1.1, 0.5]], dtype=torch.float64)).requires_grad_(True)  # drift this step
    inp = PolicyLossInputs(logprobs=lp, old_logprobs=old, advantages=torch.tensor([[1.0, 1.0, -1.0]]),
                           mask=torch.ones_like(lp), proximal_logprobs=prox)
    loss, m = grpo_loss(inp, GRPOConfig(loss_agg="seq_mean_token_sum", proximal_clip=True))
    # token 0: r 1.5 > 1.28 clipped; token 1: r 1.1 inside; token 2: A < 0, r 0.5 < 0.8 clipped.
    assert loss.item() == pytest.approx(1.5 * (-1.28 - 1.1 + 0.8))
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -1.5 * 1.1, 0.0]], dtype=torch.float64))
    assert m["clip_frac"] == pytest.approx(2 / 3) and m["behaviour_weight_mean"] == pytest.approx(1.5)


def test_proximal_log_probs_of_the_wrong_shape_are_refused() -> None:
    lp, inp = _stale_batch([1.0, 1.0], [1.0, -1.0])
    bad = PolicyLossInputs(**{**inp.__dict__, "proximal_logprobs": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="proximal_logprobs has shape"):
        grpo_loss(bad, GRPOConfig())
