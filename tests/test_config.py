"""Configuration loading: good files, unknown keys, wrong types and out-of-bounds values each give a
message that names the file, the key and what to do; dotted overrides; the CLI's `config show`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medgr2_ray.cli import main
from medgr2_ray.config import Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_every_shipped_config_loads() -> None:
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files, "configs/ must hold at least the embedded default"
    for path in files:
        assert isinstance(load_config(path), Config), path


def test_good_file_and_dotted_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "learner:\n  lr: 0.005\ngrpo:\n  group_size: 4\n")
    cfg = load_config(path, ["learner.lr=1e-5", "policy.lora.enabled=true", "data.test_sets=[a.json]"])
    assert cfg.learner.lr == pytest.approx(1e-5)  # the override wins over the file
    assert cfg.grpo.group_size == 4  # the file wins over the default
    assert cfg.policy.lora.enabled is True
    assert cfg.data.test_sets == ["a.json"]
    assert cfg.generator.lora.enabled is False  # sections are independent copies


def test_unknown_key_names_file_key_and_closest(tmp_path: Path) -> None:
    path = _write(tmp_path, "grpo:\n  grup_size: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "grpo.grup_size" in msg and "did you mean 'grpo.group_size'" in msg


def test_unknown_section_suggests_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lerner'; did you mean 'learner'"):
        load_config(_write(tmp_path, "lerner:\n  lr: 0.1\n"))


def test_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'learner.micro_batch_size': .*integer.*'eight'"):
        load_config(_write(tmp_path, "learner:\n  micro_batch_size: eight\n"))


def test_out_of_bounds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'grpo.clip_low': .*less than 1"):
        load_config(_write(tmp_path, "grpo:\n  clip_low: 1.5\n"))


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["learner.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_trust_remote_code_is_off_by_default() -> None:
    cfg = Config()
    assert not (cfg.policy.trust_remote_code or cfg.generator.trust_remote_code or cfg.reward_model.trust_remote_code)


def test_dump_round_trips() -> None:
    cfg = load_config(None, ["run.name=x", "reward.alpha=0.5"])
    again = Config.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_cli_config_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "show", str(REPO / "configs" / "cpu-tiny.yaml"), "--set", "learner.lr=0.01"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["learner"]["lr"] == 0.01 and shown["run"]["name"] == "cpu-tiny"
    assert main(["config", "show", "--set", "learner.lrr=1"]) == 2
    assert "did you mean 'learner.lr'" in capsys.readouterr().err


def test_grpo_lr_overrides_the_learner_rate_for_the_grpo_stage_only() -> None:
    from medgr2_ray.loop.grpo_stage import stage_config

    cfg = load_config(REPO / "configs" / "cpu-tiny.yaml", [])
    assert cfg.grpo.lr == 1e-4 and cfg.learner.lr == 1e-3
    assert stage_config(cfg).learner.lr == 1e-4 and cfg.learner.lr == 1e-3  # the original is untouched
    assert stage_config(cfg).learner.schedule == cfg.learner.schedule
    same = load_config(None, [])
    assert same.grpo.lr is None and stage_config(same) is same
    with pytest.raises(Exception, match="grpo.lr"):
        load_config(None, ["grpo.lr=0"])


def test_augmentation_strengths_are_validated_by_name() -> None:
    cfg = load_config(None, ["solver.augmentation.grayscale_prob=1.0", "solver.augmentation.crop_scale=1"])
    assert cfg.solver.augmentation.grayscale_prob == 1.0 and cfg.solver.augmentation.crop_scale == 1.0
    with pytest.raises(ConfigError, match=r"'solver.augmentation.crop_scale': .*less than or equal to 1"):
        load_config(None, ["solver.augmentation.crop_scale=1.5"])
    with pytest.raises(ConfigError, match=r"'solver.augmentation.flip_prob': .*greater than or equal to 0"):
        load_config(None, ["solver.augmentation.flip_prob=-0.1"])
