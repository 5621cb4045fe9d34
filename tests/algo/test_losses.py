"""GRPO, SFT and reward-regression losses against hand values and an independent scalar formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from medgr2_ray.algo.losses import (
    PolicyLossInputs,
    grpo_loss,
    kl_penalty,
    loss_normalizer,
    reward_regression_loss,
    sft_loss,
)
from medgr2_ray.config import GRPOConfig

torch.set_num_threads(1)
AGGS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")


def _ref_token_loss(lp: float, old: float, a: float, ref: float | None, cfg: GRPOConfig) -> float:
    """The per-token GRPO loss written out case by case with python floats (no torch).

    Decoupled (proximal_clip): the proximal policy is lp itself (one optimizer step per batch), so the
    proximal ratio is 1 and the loss is the truncated behaviour weight times the PPO term at r = 1.
    """
    r = 1.0 if cfg.proximal_clip else math.exp(lp - old)
    weight = min(math.exp(lp - old), cfg.importance_cap) if cfg.proximal_clip else 1.0
    lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
    if a >= 0:
        pg = -a * min(r, hi)  # min(rA, clip(r)A) for A >= 0 is A * min(r, hi) (r < lo stays unclipped)
    else:
        pg = -a * min(max(r, lo), cfg.importance_cap)  # max(r, clip(r)) = max(r, lo), then dual clip
    pg *= weight
    if ref is not None and cfg.kl_coef > 0:
        d = lp - ref
        kl = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) + d - 1}[cfg.kl_estimator]
        pg += cfg.kl_coef * kl
    return pg


def _ref_loss(lp, old, adv, mask, ref, cfg: GRPOConfig) -> float:
    seqs = []
    for i in range(len(lp)):
        toks = [_ref_token_loss(lp[i][t], old[i][t], adv[i], None if ref is None else ref[i][t], cfg)
                for t in range(len(lp[i])) if mask[i][t] > 0]
        seqs.append(toks)
    if cfg.loss_agg == "token_mean":
        n = sum(len(s) for s in seqs)
        return sum(sum(s) for s in seqs) / max(n, 1)
    nonempty = [s for s in seqs if s]
    if cfg.loss_agg == "seq_mean_token_sum":
        return sum(sum(s) for s in nonempty) / max(len(nonempty), 1)
    return sum(sum(s) / len(s) for s in nonempty) / max(len(nonempty), 1)


# Two sequences, four token slots; the second has one padded slot holding garbage the loss must ignore.
LP = [[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.2, -0.7, float("nan")]]
OLD = [[-1.2, -0.5, -1.0, -0.1], [-0.9, -1.0, -2.5, float("-inf")]]
REF = [[-1.1, -0.4, -2.2, -0.3], [-0.3, -1.5, -0.9, 5.0]]
MASK = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
ADV = [1.0, -0.5]


def _inputs(ref: bool = True) -> PolicyLossInputs:
    return PolicyLossInputs(
        logprobs=torch.tensor(LP, dtype=torch.float64, requires_grad=True),
        old_logprobs=torch.tensor(OLD, dtype=torch.float64),
        advantages=torch.tensor(ADV, dtype=torch.float64),
        mask=torch.tensor(MASK, dtype=torch.float64),
        ref_logprobs=torch.tensor(REF, dtype=torch.float64) if ref else None,
    )


@pytest.mark.parametrize("proximal_clip", (True, False))
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("estimator", ("k1", "k2", "k3"))
def test_grpo_loss_matches_independent_formula(agg: str, estimator: str, proximal_clip: bool) -> None:
    cfg = GRPOConfig(loss_agg=agg, kl_coef=0.1, kl_estimator=estimator, proximal_clip=proximal_clip)
    loss, metrics = grpo_loss(_inputs(), cfg)
    lp_clean = [row[:] for row in LP]
    expected = _ref_loss(lp_clean, OLD, ADV, MASK, REF, cfg)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert math.isfinite(metrics["loss"]) and metrics["tokens"] == 7.0


def test_grpo_aggregation_by_hand() -> None:
    # ratio 1 everywhere (logprobs == old), no KL: the per-token loss is -A.
    lp = torch.log(torch.full((2, 3), 0.5, dtype=torch.float64))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    inp = PolicyLossInputs(logprobs=lp, old_logprobs=lp.clone(), advantages=torch.tensor([2.0, -1.0]), mask=mask)
    # token_mean: (-2 * 3 + 1) / 4; seq_mean_token_sum: (-6 + 1) / 2; seq_mean_token_mean: (-2 + 1) / 2
    for agg, want in zip(AGGS, (-5 / 4, -5 / 2, -1 / 2)):
        loss, _ = grpo_loss(inp, GRPOConfig(loss_agg=agg))
        assert loss.item() == pytest.approx(want)


def test_clip_and_truncation_regions_by_hand() -> None:
    """The behaviour-clipped objective (proximal_clip off): clip and dual clip against pi_behav."""
    # token 0: A=+1, r=1.5 -> clipped at 1.28 (no grad); token 1: A=-1, r=0.5 -> clipped at 0.8 (no grad);
    # token 2: A=-1, r=3 -> truncated at importance_cap 2 (no grad); token 3: A=-1, r=1.5 -> 1.5, grad 1.5.
    ratios = torch.tensor([[1.5, 0.5, 3.0, 1.5]], dtype=torch.float64)
    old = torch.zeros(1, 4, dtype=torch.float64)
    lp = torch.log(ratios).requires_grad_(True)
    inp = PolicyLossInputs(logprobs=lp, old_logprobs=old, advantages=torch.tensor([[1.0, -1.0, -1.0, -1.0]]),
                           mask=torch.ones(1, 4))
    loss, m = grpo_loss(inp, GRPOConfig(loss_agg="seq_mean_token_sum", importance_cap=2.0, proximal_clip=False))
    assert loss.item() == pytest.approx(-1.28 + 0.8 + 2.0 + 1.5)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.0, 0.0, 1.5]], dtype=torch.float64))
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25 and m["clip_frac"] == 0.5
    assert m["truncated_frac"] == 0.25
    assert m["ratio_max"] == pytest.approx(3.0) and m["ratio_min"] == pytest.approx(0.5)
    assert m["ratio_mean"] == pytest.approx((1.5 + 0.5 + 3.0 + 1.5) / 4)


def test_kl_estimators_by_hand_and_exact_expectation() -> None:
    lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-1.0))
    # Enumerating a categorical p: E_p[k1] = E_p[k3] = KL(p || q) exactly; k3 is never negative.
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.4, 0.1], dtype=torch.float64)
    kl = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        assert float((p * kl_penalty(p.log(), q.log(), est)).sum()) == pytest.approx(kl, rel=1e-12)
    assert bool((kl_penalty(p.log(), q.log(), "k3") >= 0).all())


def test_kl_metric_and_entropy_metric_ignore_padding() -> None:
    inp = _inputs()
    ent = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 99.0]])
    inp = PolicyLossInputs(**{**inp.__dict__, "entropy": ent})
    _, m = grpo_loss(inp, GRPOConfig(kl_estimator="k1"))
    valid = [(i, t) for i in range(2) for t in range(4) if MASK[i][t]]
    assert m["kl"] == pytest.approx(sum(LP[i][t] - REF[i][t] for i, t in valid) / 7)
    assert m["entropy"] == pytest.approx(10 / 7)


def test_kl_coef_without_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(_inputs(ref=False), GRPOConfig(kl_coef=0.1))


def test_shape_mismatch_is_refused() -> None:
    inp = _inputs()
    with pytest.raises(ValueError, match="advantages has shape"):
        grpo_loss(PolicyLossInputs(**{**inp.__dict__, "advantages": torch.zeros(3)}), GRPOConfig())
    with pytest.raises(ValueError, match="mask has shape"):
        grpo_loss(PolicyLossInputs(**{**inp.__dict__, "mask": torch.ones(2, 3)}), GRPOConfig())


def test_empty_mask_gives_zero_loss_not_nan() -> None:
    lp = torch.zeros(2, 3, requires_grad=True)
    inp = PolicyLossInputs(logprobs=lp, old_logprobs=torch.zeros(2, 3), advantages=torch.ones(2), mask=torch.zeros(2, 3))
    for agg in AGGS:
        loss, m = grpo_loss(inp, GRPOConfig(loss_agg=agg))
        assert loss.item() == 0.0 and m["tokens"] == 0.0


batch_shapes = st.tuples(st.integers(2, 6), st.integers(1, 5), st.integers(0, 10_000))


def _random_batch(b: int, t: int, seed: int) -> PolicyLossInputs:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = lp + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = lp + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=g) > 0.3).double()
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    return PolicyLossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask, ref_logprobs=ref)


@settings(max_examples=60, deadline=None)
@given(shape=batch_shapes, agg=st.sampled_from(AGGS), est=st.sampled_from(("k1", "k2", "k3")), prox=st.booleans())
def test_micro_batched_accumulation_equals_full_batch(shape: tuple[int, int, int], agg: str, est: str, prox: bool) -> None:
    b, t, seed = shape
    full = _random_batch(b, t, seed)
    cfg = GRPOConfig(loss_agg=agg, kl_coef=0.05, kl_estimator=est, proximal_clip=prox)
    lp_full = full.logprobs.clone().requires_grad_(True)
    loss_full, _ = grpo_loss(PolicyLossInputs(**{**full.__dict__, "logprobs": lp_full}), cfg)
    loss_full.backward()
    split = b // 2
    total = loss_normalizer(full.mask[:split], agg) + loss_normalizer(full.mask[split:], agg)
    lp_micro = full.logprobs.clone().requires_grad_(True)
    acc = 0.0
    for sl in (slice(0, split), slice(split, b)):
        part = PolicyLossInputs(logprobs=lp_micro[sl], old_logprobs=full.old_logprobs[sl], advantages=full.advantages[sl],
                                mask=full.mask[sl], ref_logprobs=full.ref_logprobs[sl])
        if loss_normalizer(part.mask, agg) == 0:
            continue
        loss, _ = grpo_loss(part, cfg, normalizer=max(total, 1.0))
        loss.backward()
        acc += loss.item()
    assert acc == pytest.approx(loss_full.item(), abs=1e-12)
    micro_grad = lp_micro.grad if lp_micro.grad is not None else torch.zeros_like(lp_full)  # all-padding batch
    torch.testing.assert_close(micro_grad, lp_full.grad, atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(shape=batch_shapes, agg=st.sampled_from(AGGS), prox=st.booleans())
def test_gradient_signs_and_masked_tokens(shape: tuple[int, int, int], agg: str, prox: bool) -> None:
    """On-policy (ratio 1): a positive-advantage token's log-prob gradient points up, a negative one's down,
    and masked tokens get exactly zero gradient, whatever garbage sits in their slots."""
    b, t, seed = shape
    batch = _random_batch(b, t, seed)
    lp = batch.logprobs.clone()
    lp[batch.mask == 0] = float("nan")
    lp.requires_grad_(True)
    old = lp.detach().clone()
    old[batch.mask == 0] = float("-inf")
    inp = PolicyLossInputs(logprobs=lp, old_logprobs=old, advantages=batch.advantages, mask=batch.mask)
    loss, _ = grpo_loss(inp, GRPOConfig(loss_agg=agg, proximal_clip=prox))
    loss.backward()
    grad = lp.grad
    assert bool(torch.isfinite(grad).all()) and bool((grad[batch.mask == 0] == 0).all())
    descent = -grad  # the direction gradient descent moves the log-probs
    adv = batch.advantages.unsqueeze(1).expand_as(grad)
    on = batch.mask > 0
    assert bool((descent[on & (adv > 0)] > 0).all())
    assert bool((descent[on & (adv < 0)] < 0).all())


@pytest.mark.parametrize("proximal_clip", (True, False))
def test_grpo_learns_a_bandit_from_stale_rollouts(proximal_clip: bool) -> None:
    """Learning: a 5-armed bandit policy trained with group advantages + grpo_loss on rollouts sampled by
    a policy one update old (stale behaviour log-probs) concentrates on the rewarded arm. Two updates
    per batch: the decoupled objective gets the first forward's log-probs as the proximal policy."""
    torch.manual_seed(0)
    logits = torch.zeros(5, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    cfg = GRPOConfig(loss_agg="seq_mean_token_sum", clip_low=0.2, clip_high=0.28, importance_cap=2.0,
                     proximal_clip=proximal_clip)
    from medgr2_ray.algo.advantages import group_advantages

    behaviour = logits.detach().clone()
    for _ in range(60):
        probs = torch.softmax(behaviour, 0)
        arms = torch.multinomial(probs.expand(4, 5), 8, replacement=True)  # 4 groups of 8
        rewards = (arms == 3).double()
        adv = group_advantages(rewards, scale_by_std=False).reshape(-1, 1)
        old = torch.log_softmax(behaviour, 0)[arms].reshape(-1, 1)
        behaviour = logits.detach().clone()  # the next rollouts come from this (now stale) version
        proximal = torch.log_softmax(behaviour, 0)[arms].reshape(-1, 1)  # before this batch's first update
        for _ in range(2):  # two updates per batch: the second sees ratios != 1
            lp = torch.log_softmax(logits, 0)[arms].reshape(-1, 1)
            loss, _ = grpo_loss(PolicyLossInputs(logprobs=lp, old_logprobs=old, advantages=adv[:, 0],
                                                 mask=torch.ones_like(lp), proximal_logprobs=proximal), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.softmax(logits, 0)[3].item() > 0.9


def test_sft_loss_shift_and_mask_by_hand() -> None:
    # vocab 3; labels [0, 1, 2, 1]; only the last two tokens are targets (mask on positions 2, 3).
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 1, 2, 1]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    loss, m = sft_loss(logits, labels, mask)
    # position 1 predicts token 2 (p=0.8); position 2 predicts token 1 (p=0.3)
    assert loss.item() == pytest.approx(-(math.log(0.8) + math.log(0.3)) / 2, rel=1e-6)
    assert m["tokens"] == 2 and m["token_accuracy"] == 0.5
    # prompt/image positions (whose next token is masked) and the last position get no gradient
    logits = logits.clone().requires_grad_(True)
    sft_loss(logits, labels, mask)[0].backward()
    assert bool((logits.grad[0, [0, 3]] == 0).all()) and bool((logits.grad[0, [1, 2]] != 0).any(dim=-1).all())


def test_sft_loss_ignores_pad_labels_and_accumulates_with_normalizer() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (4, 6), generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.4).double()
    labels[mask == 0] = -100  # pad/ignore labels must not crash or count
    full, _ = sft_loss(logits, labels, mask)
    m = mask[:, 1:]
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none", ignore_index=-100)
    assert full.item() == pytest.approx(float((want * m.reshape(-1)).sum() / m.sum()))
    total = float(m.sum())
    parts = [sft_loss(logits[s], labels[s], mask[s], normalizer=total)[0].item() for s in (slice(0, 1), slice(1, 4))]
    assert sum(parts) == pytest.approx(full.item())


def test_sft_learns() -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(7, 7)
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1.0]])
    first = sft_loss(emb(ids), ids, mask)[0].item()
    for _ in range(50):
        loss, m = sft_loss(emb(ids), ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["loss"] < 0.1 * first and m["token_accuracy"] == 1.0


def test_reward_regression_by_hand_and_learning() -> None:
    pred = torch.tensor([[9.0], [6.0], [1.0], [-5.0]], requires_grad=True)
    target = torch.tensor([10.0, 6.0, 0.0, -6.0])
    loss, m = reward_regression_loss(pred, target)
    assert loss.item() == pytest.approx(3 / 4) and m["mae"] == pytest.approx(0.75)
    assert m["pearson"] == pytest.approx(float(torch.corrcoef(torch.stack([pred.detach()[:, 0], target]))[0, 1]))
    half = [reward_regression_loss(pred[s], target[s], normalizer=4)[0].item() for s in (slice(0, 2), slice(2, 4))]
    assert sum(half) == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="shape"):
        reward_regression_loss(torch.zeros(3), torch.zeros(4))
    # learning: a linear head on fixed features fits the graded targets
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    head = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(head.parameters(), lr=0.3)
    start = reward_regression_loss(head(x), target)[0].item()
    for _ in range(200):
        loss, _ = reward_regression_loss(head(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * start
