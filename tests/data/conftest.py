"""Fixtures of the data-layer tests: one seed pool built per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def seed_pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed pool, built once for the session (about 5 s)."""
    from medgr2_ray.data.seedpool import build_seed_pool

    return build_seed_pool(tmp_path_factory.mktemp("seed") / "pool")
