"""Fixtures for the actor tests: real typed messages (ScoredGroups with real arrays) built by hand."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest

from medgr2_ray.types import GenerationRequest, Modality, Rollout, Sample, ScoredGroup, TaskType

GroupFactory = Callable[..., ScoredGroup]


def make_group(group_id: str, version: int, n: int = 2, with_image: bool = True) -> ScoredGroup:
    """A ScoredGroup of `n` rollouts produced by weight `version`, with an image and a sample."""
    rng = np.random.default_rng(zlib.crc32(group_id.encode()))
    sample = Sample(
        sample_id=f"s-{group_id}", image_id="img0", image_path="img0.png", question="Which modality?",
        options=("CT", "MR"), answer="CT", task_type=TaskType.MODALITY, modality=Modality.CT,
    )
    image = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    request = GenerationRequest(group_id, "Which modality?", (image,) if with_image else (), sample=sample)
    rollouts = tuple(
        Rollout(group_id, i, (1, 2, 3), (4, 5), "A", rng.normal(size=2).astype(np.float32), "stop", version)
        for i in range(n)
    )
    return ScoredGroup(group_id, request, rollouts, rng.normal(size=n).astype(np.float32))


@pytest.fixture
def group_factory() -> GroupFactory:
    """`make_group(group_id, version, n=2, with_image=True)`."""
    return make_group
