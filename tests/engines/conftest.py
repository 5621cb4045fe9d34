"""Fixtures shared by the HF and vLLM engine tests (both lanes): two tiny model builds and real prompts
(pydicom-data's CT slice, a text-only prompt with a system message, two images of different sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medgr2_ray.config import ModelConfig
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import GenerationRequest

from engine_helpers import ct_rgb


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny policy builds for seeds 0 and 1 (a stale engine and a fresh one differ in weights)."""
    cache = tmp_path_factory.mktemp("models")
    return {seed: ensure_model_dir(ModelConfig(), cache, seed=seed, role="policy") for seed in (0, 1)}


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    """An image prompt, a text-only prompt with a system message, and two images of different sizes."""
    ct = ct_rgb()
    return [
        GenerationRequest("ct", "Which organ is shown in this CT slice?", (ct,)),
        GenerationRequest("text", "Name one lung window setting.", system="Answer briefly."),
        GenerationRequest("two", "Compare.", (np.ascontiguousarray(ct[:64]), np.ascontiguousarray(ct[::4, ::4]))),
    ]

