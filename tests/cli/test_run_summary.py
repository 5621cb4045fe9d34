"""`medgr2 run`'s closing summary, read from a run directory alone: wall time per stage from the timeline,
kept samples, each accuracy with its change, and a plain sentence when a stage lowered held-out accuracy."""

from __future__ import annotations

import json
from pathlib import Path

from medgr2_ray.cli.summary import format_summary
from medgr2_ray.data.store import write_samples
from medgr2_ray.eval.timeline import write_timeline
from medgr2_ray.messages import Span
from medgr2_ray.types import Modality, Provenance, Sample, TaskType


def _run(tmp_path: Path, accuracies: dict[str, float]) -> Path:
    for i, (name, acc) in enumerate(accuracies.items()):
        (tmp_path / "eval").mkdir(exist_ok=True)
        (tmp_path / "eval" / f"{i}_{name}.json").write_text(json.dumps(
            {"accuracy": acc, "correct": round(60 * acc), "total": 60, "blind_bound": 0.317}))
    (tmp_path / "eval" / "transfer_cross-task.json").write_text("{}")  # another kind of file: ignored
    samples = [Sample(f"s{i}", "img", "img.png", "q", ("CT", "MR"), "CT", TaskType.MODALITY, Modality.CT,
                      provenance=Provenance("generator", 1, 1, selected=i < 3, reason=None if i < 3 else "below_tau"))
               for i in range(10)]
    write_samples(tmp_path / "data" / "round_1" / "samples.jsonl", samples)
    (tmp_path / "data" / "round_1" / "failures.jsonl").write_text('{"reason": "x", "text": ""}\n' * 4)
    write_timeline(tmp_path, [Span("generator pool", "generate", 0.0, 30.0),
                              Span("P learner", "train_policy_sft", 30.0, 95.5),
                              Span("evaluator", "evaluate", 95.5, 100.0), Span("evaluator", "evaluate", 120.0, 125.0)],
                   t0=0.0)
    return tmp_path


def test_the_summary_says_what_each_stage_did(tmp_path: Path) -> None:
    run = _run(tmp_path, {"untrained": 0.2, "after_sft": 0.55, "after_grpo": 0.5333, "omnimedvqa": 0.4})
    text = format_summary(run, 331.2, run / "report" / "index.html", "http://127.0.0.1:8265")
    lines = text.splitlines()
    assert lines[0] == f"run directory: {run}  (wall time 5:31.2)"
    assert "wall time per stage: generate 0:30.0, train_policy_sft 1:05.5, evaluate 0:09.5" in lines
    assert "generated samples: 3 kept of 10 scored candidates; 4 generator outputs did not parse" in text
    assert "  untrained    20.0% (12/60)  image-blind bound 31.7%" in lines
    assert "  after_sft    55.0% (33/60)  +35.0 points vs untrained  image-blind bound 31.7%" in lines
    assert "  after_grpo   53.3% (32/60)   -1.7 points vs after_sft  image-blind bound 31.7%" in lines
    assert "  omnimedvqa   40.0% (24/60)  image-blind bound 31.7%" in lines  # another test set: no change
    (note,) = [line for line in lines if "LOWERED" in line]
    assert note == ("  note: after_grpo LOWERED held-out accuracy by 1.7 points (from 55.0% at after_sft; "
                    "one question is 1.7 points of 60)")
    assert f"report: {run / 'report' / 'index.html'}" in lines
    assert "Ray dashboard (while the run is up): http://127.0.0.1:8265" in lines


def test_no_note_when_every_stage_helps_and_nothing_for_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "0_untrained.json").write_text(json.dumps({"accuracy": 0.2, "correct": 2, "total": 10}))
    (tmp_path / "eval" / "1_after_sft.json").write_text(json.dumps({"accuracy": 0.3, "correct": 3, "total": 10}))
    text = format_summary(tmp_path, 10.0, None, None)
    assert "LOWERED" not in text and "+10.0 points vs untrained" in text
    assert "wall time per stage" not in text and "generated samples" not in text and "dashboard" not in text
