"""Group-relative advantages for GRPO and the dynamic-sampling filter.

GRPO replaces a learned value baseline with the mean reward of the other completions of the same
prompt: A_i = r_i - mean(r_group). The original GRPO also divides by the group's standard deviation;
Dr. GRPO (Liu et al. 2025) shows that this re-weights prompts by how *easy or hard* they are (a group
with a tiny spread gets huge advantages), so it is a switch (`scale_by_std`), off by default in the
config. Groups whose rewards are all equal carry no learning signal (every advantage is zero);
dynamic sampling (DAPO) drops them before they take a place in the batch.

Pure torch: no Ray, no models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medgr2_ray.types import ScoredGroup


def _check_rewards(rewards: torch.Tensor) -> None:
    """Refuse shapes and values that would silently produce nonsense advantages."""
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must be a [num_groups, group_size] tensor, got shape {tuple(rewards.shape)}; "
            "stack the rewards of each prompt's completions into one row"
        )
    if not torch.is_floating_point(rewards):
        raise ValueError(f"rewards must be a floating-point tensor, got {rewards.dtype}; call .float() first")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero()[0].tolist()
        raise ValueError(
            f"rewards contain a non-finite value (first at group {bad[0]}, completion {bad[1]}); "
            "a reward function returned NaN/inf: fix it or give that completion a finite reward"
        )


def informative_groups(rewards: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
    """Bool [G]: True where a group's rewards are not all equal (within `atol`).

    A group of identical rewards has all-zero advantages, so it only dilutes the batch: DAPO's
    dynamic sampling drops it. A group of size 1 is never informative.
    """
    _check_rewards(rewards)
    if rewards.shape[1] == 0:
        return torch.zeros(rewards.shape[0], dtype=torch.bool)
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return spread > atol


def group_advantages(rewards: torch.Tensor, scale_by_std: bool, eps: float = 1e-6) -> torch.Tensor:
    """Advantages [G, n] from rewards [G, n]: each row minus its mean, optionally over its std.

    The std is the unbiased (Bessel-corrected) sample std, as in the original GRPO implementations.
    Zero-variance groups get exactly zero advantages (not eps-divided rounding noise), so a
    dropped or kept uninformative group can never push the policy anywhere.
    """
    _check_rewards(rewards)
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)
    keep = informative_groups(rewards).unsqueeze(1)
    return torch.where(keep, centred, torch.zeros_like(centred))


@dataclass(frozen=True)
class DynamicSamplingResult:
    """Groups kept for learning and the ones dropped because every reward was equal (counted, not lost)."""

    kept: tuple[ScoredGroup, ...]
    dropped: tuple[ScoredGroup, ...]

    @property
    def num_dropped(self) -> int:
        """How many groups carried no signal."""
        return len(self.dropped)


def filter_informative_groups(groups: Sequence[ScoredGroup], atol: float = 0.0) -> DynamicSamplingResult:
    """Split scored groups into informative ones and all-equal ones (dynamic sampling).

    Groups may have different sizes, so each is checked on its own row.
    """
    kept: list[ScoredGroup] = []
    dropped: list[ScoredGroup] = []
    for group in groups:
        row = torch.as_tensor(np.asarray(group.rewards, dtype=np.float32)).reshape(1, -1)
        (kept if bool(informative_groups(row, atol)[0]) else dropped).append(group)
    return DynamicSamplingResult(kept=tuple(kept), dropped=tuple(dropped))
