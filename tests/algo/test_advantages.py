"""Group-relative advantages and dynamic sampling: hand-computed values and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medgr2_ray.algo.advantages import filter_informative_groups, group_advantages, informative_groups
from medgr2_ray.types import GenerationRequest, ScoredGroup

torch.set_num_threads(1)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])


def test_mean_centred_by_hand() -> None:
    adv = group_advantages(REWARDS, scale_by_std=False)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [-0.75, -0.75, -0.75, 2.25]])
    torch.testing.assert_close(adv, expected)


def test_std_scaled_by_hand() -> None:
    # group 0: unbiased std = sqrt(4 * 0.25 / 3) = 1/sqrt(3); group 2: sqrt((3 * 0.5625 + 5.0625) / 3) = 1.5
    adv = group_advantages(REWARDS, scale_by_std=True, eps=0.0)
    s = math.sqrt(3.0) / 2.0
    expected = torch.tensor([[s, -s, -s, s], [0.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -0.5, 1.5]])
    torch.testing.assert_close(adv, expected)


def test_zero_variance_groups_are_exact_zeros_and_uninformative() -> None:
    rewards = torch.tensor([[0.3, 0.3, 0.3], [1.0, 0.0, 1.0], [-2.0, -2.0, -2.0]])
    for scale in (False, True):
        adv = group_advantages(rewards, scale_by_std=scale)
        assert torch.equal(adv[0], torch.zeros(3)) and torch.equal(adv[2], torch.zeros(3))
        assert bool(torch.isfinite(adv).all())
    assert informative_groups(rewards).tolist() == [False, True, False]


def test_group_of_one_gives_zero() -> None:
    assert torch.equal(group_advantages(torch.tensor([[5.0], [1.0]]), scale_by_std=True), torch.zeros(2, 1))
    assert informative_groups(torch.tensor([[5.0]])).tolist() == [False]


def test_bad_rewards_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="num_groups, group_size"):
        group_advantages(torch.zeros(4), scale_by_std=False)
    with pytest.raises(ValueError, match="non-finite value .*group 1, completion 0"):
        group_advantages(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]]), scale_by_std=False)
    with pytest.raises(ValueError, match="floating-point"):
        group_advantages(torch.tensor([[0, 1]]), scale_by_std=False)


reward_rows = st.integers(1, 6).flatmap(
    lambda g: st.integers(2, 8).flatmap(
        lambda n: st.lists(
            st.lists(st.sampled_from([0.0, 0.2, 1.0, -6.0, 10.0, 0.5]), min_size=n, max_size=n), min_size=g, max_size=g
        )
    )
)


@settings(max_examples=80, deadline=None)
@given(rows=reward_rows, scale=st.booleans())
def test_advantages_sum_to_zero_in_every_group(rows: list[list[float]], scale: bool) -> None:
    rewards = torch.tensor(rows, dtype=torch.float64)
    adv = group_advantages(rewards, scale_by_std=scale)
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(len(rows), dtype=torch.float64), atol=1e-9, rtol=0)
    # ordering within a group is preserved: a better completion never gets a smaller advantage
    for r, a in zip(rewards, adv):
        order = torch.argsort(r)
        assert bool((a[order][1:] >= a[order][:-1] - 1e-12).all())
    informative = informative_groups(rewards)
    if scale and bool(informative.any()):  # informative groups come out with unit (unbiased) std
        stds = adv[informative].std(dim=1, unbiased=True)
        torch.testing.assert_close(stds, torch.ones_like(stds), atol=1e-4, rtol=0)
    assert bool((adv[~informative] == 0).all())


def _group(gid: str, rewards: list[float]) -> ScoredGroup:
    return ScoredGroup(group_id=gid, request=GenerationRequest(request_id=gid, prompt="q"), rollouts=(),
                       rewards=np.asarray(rewards, dtype=np.float32))


def test_filter_informative_groups_counts_what_it_drops() -> None:
    groups = [_group("a", [1, 1, 1]), _group("b", [0, 1]), _group("c", [0.2, 0.2, 0.2, 0.2]), _group("d", [0, 0, 1, 1])]
    result = filter_informative_groups(groups)
    assert [g.group_id for g in result.kept] == ["b", "d"]
    assert [g.group_id for g in result.dropped] == ["a", "c"]
    assert result.num_dropped == 2 and len(result.kept) + len(result.dropped) == len(groups)
