"""Med-R1's cross-modality and cross-task protocols on the real seed pool, with real tiny solvers on the
session's real Ray cluster: the questions are split by study, the matrix has one cell per (row, column)
with the right counts, a solver fine-tuned on one modality beats the untrained one there, and bad
names or configurations fail with an error that names the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytest
import torch

from medgr2_ray.config import Config, ConfigError, EvalConfig, load_config
from medgr2_ray.data.vocab import display_name
from medgr2_ray.eval.transfer import PROTOCOLS, TransferMatrix, check_protocol, group_of, spec_from_config
from medgr2_ray.eval.rundata import CycleData, prepare_data
from medgr2_ray.loop.cycle import with_absolute_paths
from medgr2_ray.types import TaskType

torch.set_num_threads(1)
SMALL = ["solver.eval_per_modality=4", "cycle.seeds_per_image=1", "policy.tiny.image_size=112"]


@dataclass(frozen=True)
class Setup:
    cfg: Config
    data: CycleData


@pytest.fixture(scope="module")
def setup(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("transfer-runs")
    cfg = with_absolute_paths(load_config(None, [f"data.cache_dir={tiny_cache}", f"run.root={root}", "run.name=xfer",
                                                 *SMALL]))
    return Setup(cfg, prepare_data(cfg))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_questions_are_split_by_study_and_match_the_test_set(setup: Setup, protocol: str) -> None:
    cfg, data = setup.cfg, setup.data
    spec = spec_from_config(cfg, protocol, data.train, data.test, data.test_samples)
    test_studies = {i.study_id for i in data.test}
    test_ids, train_ids = {i.image_id for i in data.test}, {i.image_id for i in data.train}
    study = {i.image_id: i.study_id for i in data.pool.images}
    for row, train in spec.train.items():
        assert train and all(group_of(protocol, s) == row for s in train)
        assert all(s.image_id in train_ids and study[s.image_id] not in test_studies for s in train), row
    assert all(s.image_id in test_ids for s in spec.test)
    # the modality columns are exactly the run's balanced test set; training questions ask the same way:
    # 4 options, distractors from the held-out modalities, even when the row holds one modality only
    assert [s for s in spec.test if s.task_type == TaskType.MODALITY] == data.test_samples
    names = {display_name(m) for m in {i.modality for i in data.test}}
    for s in (s for train in spec.train.values() for s in train if s.task_type == TaskType.MODALITY):
        assert len(s.options) == 4 and set(s.options) <= names and s.answer == display_name(s.modality)
    assert set(spec.rows) <= set(spec.columns) and len(spec.columns) >= 2
    if protocol == "cross-modality":
        with_test = {i.modality.value for i in data.test}
        assert set(spec.columns) == with_test
        assert set(spec.rows) == with_test & {i.modality.value for i in data.train}
        # a modality with training questions but no held-out study is no row, and the spec says why;
        # training images that give no question at all are counted
        assert "held-out" in spec.skipped["Histopathology"]
        assert spec.unusable["train Modality Recognition: modality has no held-out images"] > 0
    else:
        assert spec.rows == spec.columns == (TaskType.ANATOMY.value, TaskType.MODALITY.value)


@pytest.fixture(scope="module")
def cross_modality(setup: Setup, ray_cluster: None) -> tuple[Path, TransferMatrix]:
    from medgr2_ray.loop.transfer import run_transfer
    from medgr2_ray.models.tiny import ensure_model_dir

    cfg = setup.cfg
    model_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, cfg.run.seed, "policy")
    run_dir = Path(cfg.run.root) / cfg.run.name
    return run_dir, run_transfer(cfg, setup.data, model_dir, run_dir, "cross-modality", steps=30)


def test_matrix_shape_counts_and_files(setup: Setup, cross_modality: tuple[Path, TransferMatrix]) -> None:
    run_dir, m = cross_modality
    spec = spec_from_config(setup.cfg, "cross-modality", setup.data.train, setup.data.test, setup.data.test_samples)
    assert m.rows == spec.rows and m.columns == spec.columns and len(m.rows) >= 3
    assert sum(m.test_counts.values()) == len(spec.test)
    for row in m.rows:
        assert m.train_counts[row] == len(spec.train[row])
        assert list(m.cells[row]) == list(m.columns)
        for col, cell in m.cells[row].items():
            assert cell.total == m.test_counts[col] and 0 <= cell.correct <= cell.total
            assert cell.accuracy == pytest.approx(cell.correct / cell.total)
            assert cell.greedy_accuracy is not None
    assert list(m.baseline) == list(m.columns)
    record = json.loads((run_dir / "eval" / "transfer_cross-modality.json").read_text())
    assert record["rows"] == list(m.rows) and record["in_domain"] == pytest.approx(m.in_domain)
    assert set(record["row_seconds"]) == {"untrained", *m.rows}
    table = (run_dir / "eval" / "transfer_cross-modality.md").read_text()
    assert all(f"| {r} |" in table for r in m.rows) and "image-blind bound" in table


def test_a_solver_trained_on_one_modality_beats_the_untrained_one_there(cross_modality: tuple[Path, TransferMatrix]) -> None:
    _, m = cross_modality
    gains = {r: m.cells[r][r].accuracy - m.baseline[r].accuracy for r in m.rows}
    assert all(g > 0 for g in gains.values()), gains
    assert sum(gains.values()) / len(gains) >= 0.3, gains
    assert m.in_domain > m.out_of_domain


def test_report_shows_the_matrix(cross_modality: tuple[Path, TransferMatrix]) -> None:
    from medgr2_ray.eval.report import build_report

    run_dir, m = cross_modality
    page = build_report(run_dir).read_text()
    assert (run_dir / "report" / "transfer_cross-modality.png").is_file()
    assert "transfer_cross-modality.png" in page and "cross-modality (30 SFT steps per row)" in page
    assert f"<b>{m.cells[m.rows[0]][m.rows[0]].accuracy:.0%}" in page


def test_cli_runs_cross_task(setup: Setup, ray_cluster: None, tmp_path: Path) -> None:
    from medgr2_ray.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"run:\n  root: {tmp_path}\n  name: cli\ndata:\n  cache_dir: {setup.cfg.data.cache_dir}\n")
    assert main(["eval", "transfer", str(config), "--protocol", "cross-task", "--steps", "3",
                 *[x for s in SMALL for x in ("--set", s)], "--set", "eval.transfer_greedy=false"]) == 0
    record = json.loads((tmp_path / "cli" / "eval" / "transfer_cross-task.json").read_text())
    assert record["steps"] == 3 and record["rows"] == [TaskType.ANATOMY.value, TaskType.MODALITY.value]
    assert all(c["greedy_accuracy"] is None for row in record["cells"].values() for c in row.values())
    assert (tmp_path / "cli" / "eval" / "transfer_cross-task.md").is_file()


def test_bad_names_and_configs_say_which_field(setup: Setup) -> None:
    assert set(get_args(get_args(EvalConfig.model_fields["transfer_protocols"].annotation)[0])) == set(PROTOCOLS)
    with pytest.raises(ValueError, match=r"'cross-modal'.*eval.transfer_protocols.*cross-modality"):
        check_protocol("cross-modal")
    with pytest.raises(ConfigError, match=r"eval\.transfer_protocols"):
        load_config(None, ["eval.transfer_protocols=[cross-modal]"])
    with pytest.raises(ConfigError, match=r"eval\.transfer_steps"):
        load_config(None, ["eval.transfer_steps=0"])
    only_modality = setup.cfg.model_copy(update={"cycle": setup.cfg.cycle.model_copy(
        update={"tasks": ["Modality Recognition", "Disease Diagnosis"]})})
    with pytest.raises(ValueError, match=r"cycle\.tasks"):
        spec_from_config(only_modality, "cross-task", setup.data.train, setup.data.test, setup.data.test_samples)
    # a task the templates cannot verify is no row of cross-modality either, and is not silently lost
    spec = spec_from_config(only_modality, "cross-modality", setup.data.train, setup.data.test, setup.data.test_samples)
    assert all(s.task_type == TaskType.MODALITY for s in spec.test) and "Disease Diagnosis" in spec.skipped
    from medgr2_ray.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "transfer", "c.yaml", "--protocol", "cross-task", "--steps", "0"])
