"""Actors and Ray Train workers do not share the driver's working directory: the cycle turns every
relative path of the config into an absolute one before anything leaves the driver (a relative model
directory was once read as a hub id by the evaluation task)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgr2_ray.config import load_config
from medgr2_ray.loop.cycle import with_absolute_paths


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_model").mkdir()
    cfg = with_absolute_paths(load_config(None, [
        "run.root=runs", "data.cache_dir=cache", "data.pool=pool", "data.test_sets=[omni/test.jsonl]",
        "policy.path=local_model", "generator.path=Qwen/Qwen2.5-VL-3B-Instruct",
    ]))
    assert cfg.run.root == str(tmp_path / "runs") and cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg.data.pool == str(tmp_path / "pool") and cfg.data.test_sets == [str(tmp_path / "omni/test.jsonl")]
    assert cfg.policy.path == str(tmp_path / "local_model")
    assert cfg.generator.path == "Qwen/Qwen2.5-VL-3B-Instruct"  # not a local directory: a hub id stays one
    assert cfg.reward_model.path is None
