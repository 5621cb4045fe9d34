"""The run report is built from a run directory alone: plots for what was logged, a sample table with
thumbnails and decisions, the resolved config; model text is escaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medgr2_ray.data.store import write_samples
from medgr2_ray.eval.report import build_report
from medgr2_ray.types import Modality, Provenance, Sample, TaskType


def test_report_from_run_dir(tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(image)
    samples = [
        Sample(f"s{i}", "img", str(image), f"<b>Question {i}</b>?", ("CT", "MR"), "CT", TaskType.MODALITY,
               Modality.CT, provenance=Provenance("generator", 2, 1, reward=float(i), selected=i > 0))
        for i in range(2)
    ]
    write_samples(tmp_path / "data" / "round_1" / "samples.jsonl", samples)
    with (tmp_path / "metrics.jsonl").open("w") as f:
        for step in range(3):
            f.write(json.dumps({"stage": "grpo", "step": step, "reward_mean": 0.1 * step, "kl": 0.01}) + "\n")
        f.write(json.dumps({"stage": "round", "step": 1, "reward_mean": 4.0, "kept_reward_mean": 6.0}) + "\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "after_sft.json").write_text(json.dumps(
        {"accuracy": 0.5, "correct": 1, "total": 2, "blind_bound": 0.5, "by_modality": {"CT": 0.5}}))
    (tmp_path / "config.yaml").write_text("run:\n  name: t\n")
    index = build_report(tmp_path)
    page = index.read_text()
    for png in ("grpo_reward.png", "grpo_kl.png", "round_reward.png", "accuracy.png"):
        assert (index.parent / png).is_file() and png in page
    assert not (index.parent / "rm_loss.png").exists()  # nothing logged, nothing drawn
    assert "&lt;b&gt;Question 1&lt;/b&gt;" in page and "<b>Question" not in page
    assert "kept" in page and "rejected" in page and "50.0% (1/2)" in page and "name: t" in page
    assert (index.parent / "thumbs" / "img.jpg").is_file()
