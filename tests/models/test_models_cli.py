"""`medgr2 models build-tiny`: builds loadable models into a directory or the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgr2_ray.cli import main
from medgr2_ray.models.loading import load_vlm


def test_build_tiny_into_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny"
    assert main(["models", "build-tiny", "--out", str(out), "--set", "policy.tiny.num_hidden_layers=1"]) == 0
    assert "written to" in capsys.readouterr().out
    assert load_vlm(out).model.config.text_config.num_hidden_layers == 1


def test_build_tiny_into_cache_shares_equal_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["models", "build-tiny", "--set", f"data.cache_dir={tmp_path}", "--set", "reward_model.tiny.vision_depth=1"]
    assert main(args) == 0
    lines = dict(line.split(":", 1)[0].split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"policy", "generator", "reward"}
    assert len(list((tmp_path / "tiny_models").iterdir())) == 2  # policy == generator, reward differs
    assert main(["models", "build-tiny", "--set", "policy.tiny.hidden_sise=8"]) == 2  # config error, named
    assert "hidden_size" in capsys.readouterr().err
