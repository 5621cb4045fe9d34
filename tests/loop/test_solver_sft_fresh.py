"""Solver SFT through Ray Train: a new run in an old run directory starts over.

Ray Train loads any snapshot under the same `RunConfig` name whether or not we ask it to restore; before
the fix a run without `--resume` in a used run directory silently continued the old run's SFT (trained on
other samples) and, at equal step counts, returned the old model untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from medgr2_ray.config import load_config
from medgr2_ray.data.decoders import IngestOptions
from medgr2_ray.data.ingest import decode_bytes
from medgr2_ray.data.store import write_png
from medgr2_ray.loop.solver_sft import run_solver_sft
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import Modality, Sample, TaskType

pytestmark = pytest.mark.slow


def _dicom_rgb(name: str) -> np.ndarray:
    """A pydicom-data file decoded to RGB by our own ingestion (as the loop tests' fixtures do; importing
    their conftest would tie this file to being run from the repository root)."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file(name))
    return decode_bytes(path.read_bytes(), path.name, IngestOptions(salt=b"loop-tests"))[0].rgb


def _samples(tmp_path: Path, answer_ct: str, answer_mr: str) -> list[Sample]:
    """Two real slices (CT, MR) saved as PNG, asked the modality with the given answers."""
    out = []
    for name, modality, answer in (("CT_small.dcm", Modality.CT, answer_ct), ("MR_small.dcm", Modality.MR, answer_mr)):
        path = tmp_path / f"{name}.png"
        write_png(_dicom_rgb(name), path)
        out.append(Sample(sample_id=f"{name}-{answer}", image_id=name, image_path=str(path),
                          question="Which modality is this?", options=("CT", "MR", "X-Ray", "Ultrasound"),
                          answer=answer, task_type=TaskType.MODALITY, modality=modality))
    return out


def test_a_run_without_resume_does_not_continue_an_old_sft(ray_cluster: None, tmp_path: Path, tiny_cache: Path) -> None:
    cfg = load_config(None, [f"data.cache_dir={tiny_cache}", "loop.checkpoint_every=10"])
    policy = ensure_model_dir(cfg.policy, tiny_cache, cfg.run.seed, "policy")
    run_dir = tmp_path / "run"
    first = run_solver_sft(cfg, policy, _samples(tmp_path, "CT", "MR"), run_dir, 10, 2, augment=False)
    old = load_file(first.model_dir / "model.safetensors")
    # Same directory, other answers, no resume: this must train from the untrained policy on the new data.
    second = run_solver_sft(cfg, policy, _samples(tmp_path, "X-Ray", "Ultrasound"), run_dir, 10, 2, augment=False)
    new = load_file(second.model_dir / "model.safetensors")
    assert [step for step, _ in second.history] == [10], "the second run must report its own 10 steps"
    assert len((run_dir / "models" / "solver_sft_losses.jsonl").read_text().splitlines()) == 1  # not appended
    assert any((old[k] != new[k]).any() for k in old), "the second run returned the first run's model"
