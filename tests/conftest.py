"""Shared test fixtures: an offline, single-threaded environment and one real Ray cluster per session.

Tests never mock Ray, torch or models: they use a real local Ray cluster (`ray.init(num_cpus=4)`,
token authentication left on), real tiny models built offline and real medical images.
"""

from __future__ import annotations

import os

# Set before anything imports transformers/huggingface_hub/ray: no hub traffic, no usage stats,
# fast metric export, and one torch thread per process (2 cores are shared by Ray workers).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from pathlib import Path

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing or broken: then there is no usable GPU either
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests where CUDA is absent (they must still import cleanly)."""
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One real local Ray cluster for the whole test session (start-up costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, namespace="medgr2-tests", log_to_driver=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory (seed pool, tiny models) built once and shared by the whole session."""
    return tmp_path_factory.mktemp("medgr2_cache")
