"""Evaluation scoring: the authors' released OmniMedVQA predictions give the paper's 87.44%, the strict
protocol and macro-F1 match hand values, and bad input is counted, not fatal."""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

import pytest

from medgr2_ray.cli import main
from medgr2_ray.eval.scoring import EvalItem, is_correct, macro_f1, score_files, score_items, score_samples
from medgr2_ray.types import Modality, Sample, TaskType

REF = Path("/work/shared/reference")
PREDS = REF / "omnimedvqa_medgr2_predictions.jsonl"
SUBSET = REF / "omnimedvqa_test_subset.jsonl"
needs_reference = pytest.mark.skipif(not PREDS.is_file(), reason="reference predictions not present")


@needs_reference
def test_reference_predictions_give_the_paper_headline() -> None:
    report = score_files(PREDS)
    paper = report.protocol("paper")
    assert (paper.overall.correct, paper.overall.total) == (6865, 7851)
    assert round(100 * paper.overall.accuracy, 2) == 87.44
    # per dataset, against an independent count (strip punctuation, lower-case, compare)
    strip = lambda s: s.lower().translate(str.maketrans("", "", string.punctuation)).strip()  # noqa: E731
    hits, totals = Counter(), Counter()
    for line in PREDS.read_text().splitlines():
        r = json.loads(line)
        ds = r["question_id"].rsplit("_", 1)[0]
        totals[ds] += 1
        hits[ds] += strip(r["model_answer"]) == strip(r["gt_answer"])
    assert {k: (v.correct, v.total) for k, v in paper.by_dataset.items()} == {k: (hits[k], totals[k]) for k in totals}
    assert paper.by_dataset["ALL Challenge"].correct == 173 and len(paper.by_dataset) == 12
    assert report.problems == ()


@needs_reference
def test_subset_with_options_scores_both_protocols_with_breakdowns() -> None:
    report = score_files(PREDS, SUBSET)
    assert report.num_items == 759 and report.unanswered == 0 and report.unmatched_predictions == 7851 - 759
    paper, strict = report.protocol("paper"), report.protocol("strict")
    assert paper.overall.total == strict.overall.total == 759
    assert set(paper.by_question_type) == {"Disease Diagnosis", "Lesion Grading", "Other Biological Attributes",
                                           "Modality Recognition"}
    assert sum(t.total for t in strict.by_modality.values()) == 759
    assert strict.overall.correct == paper.overall.correct == 587  # every released answer is an option's text


def test_strict_and_paper_protocols_by_hand() -> None:
    opts = ("Microscopy", "Ultrasound", "Magnetic Resonance Imaging (MRI)")
    item = lambda pred: EvalItem("x_1", pred, "Microscopy", opts)  # noqa: E731
    cases = {  # prediction: (paper, strict)
        "Microscopy.": (True, True),
        "A": (False, True),
        "<answer>microscopy</answer>": (False, True),
        "Microscopy or Ultrasound": (False, False),
        "Ultrasound": (False, False),
        "Histology": (False, False),
        None: (False, False),
    }
    for pred, (paper, strict) in cases.items():
        assert (is_correct(item(pred), "paper"), is_correct(item(pred), "strict")) == (paper, strict), pred
    with pytest.raises(ValueError, match="unknown scoring protocol"):
        is_correct(item("A"), "lenient")


def test_macro_f1_by_hand() -> None:
    # class a: tp 1, fn 1 -> 2/3; class b: tp 1, fp 1 -> 2/3; class c: fn 1 -> 0; mean 4/9
    assert macro_f1(["a", "a", "b", "c"], ["a", "b", "b", None]) == pytest.approx(4 / 9)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0
    assert macro_f1([], []) == 0.0


def test_bad_lines_are_counted_and_unanswered_questions_are_wrong(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join([
        json.dumps({"question_id": "D_0", "model_answer": "Yes", "gt_answer": "Yes"}),
        "{not json",
        json.dumps({"question_id": "D_1", "gt_answer": "No", "model_answer": 3}),
        json.dumps({"question_id": "D_0", "model_answer": "No", "gt_answer": "Yes"}),
        json.dumps({"question_id": "E_0", "model_answer": None, "gt_answer": "No"}),
    ]) + "\n")
    report = score_files(preds)
    assert (report.protocol("paper").overall.correct, report.num_items) == (1, 2)
    assert len(report.problems) == 3 and any(":2: not valid JSON" in p for p in report.problems)
    assert report.protocol("paper").no_answer == 1
    test = tmp_path / "test.json"  # a JSON list, as the OmniMedVQA release ships it
    test.write_text(json.dumps([
        {"question_id": "D_0", "gt_answer": "Yes", "options": ["Yes", "No"], "question_type": "Disease Diagnosis",
         "modality_type": "CT(Computed Tomography)", "dataset": "D"},
        {"question_id": "D_9", "gt_answer": "No", "options": ["Yes", "No"]},
        {"question_id": "D_8", "gt_answer": "No"},
    ]))
    report = score_files(preds, test)
    strict = report.protocol("strict")
    assert (strict.overall.correct, strict.overall.total) == (1, 2)
    assert report.unanswered == 1 and report.unmatched_predictions == 1
    assert any("needs string 'question_id', 'gt_answer' and a list 'options'" in p for p in report.problems)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_files(tmp_path / "missing.jsonl")


def test_score_samples_uses_sample_metadata() -> None:
    s = [Sample(sample_id=f"s{i}", image_id="i", image_path="i.png", question="q", options=("CT", "MRI"),
                answer="CT", task_type=TaskType.MODALITY, modality=m) for i, m in enumerate((Modality.CT, Modality.MR))]
    paper, strict = score_samples(s, ["B", "CT"])
    assert strict.by_modality == {"CT": strict.by_modality["CT"], "MR": strict.by_modality["MR"]}
    assert (strict.by_modality["CT"].correct, strict.by_modality["MR"].correct) == (0, 1)
    assert paper.overall.correct == 1 and score_items([], ("paper",))[0].overall.total == 0


@needs_reference
def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "report.json"
    assert main(["eval", "score", str(PREDS), "--width", "200", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "87.44%" in text and "6,865 / 7,851" in text and "Retinal OCT-C8" in text and "92.76%" in text
    assert json.loads(out_json.read_text())["scores"][0]["overall"] == {"correct": 6865, "total": 7851}
    assert main(["eval", "score", str(PREDS), "--test", str(SUBSET), "--width", "200"]) == 0
    text = capsys.readouterr().out
    assert "strict" in text and "Lesion Grading" in text and "Microscopy Images" in text
    assert main(["eval", "score", str(tmp_path / "nope.jsonl")]) == 1  # one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("medgr2 eval score: ") and "nope.jsonl' does not exist" in err and "Traceback" not in err
