"""Benchmark readers: real OmniMedVQA records (from the authors' test file) and the other layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_helpers import FIXTURES
from medgr2_ray.data.formats import read_omnimedvqa, read_pathvqa, read_pmc_vqa, read_slake, read_vqa_rad
from medgr2_ray.data.store import DataFormatError, RecordError, read_samples, write_samples
from medgr2_ray.types import Modality, TaskType

OMNI = FIXTURES / "omnimedvqa_slice.jsonl"


def test_omnimedvqa_round_trip_through_our_format(tmp_path: Path) -> None:
    samples = read_omnimedvqa(OMNI)
    records = [json.loads(line) for line in OMNI.open()]
    assert len(samples) == len(records) == 18
    for s, r in zip(samples, records):
        assert (s.sample_id, s.question, list(s.options), s.answer, s.task_type.value, s.dataset, s.image_path) == (
            r["question_id"], r["question"], r["options"], r["gt_answer"], r["question_type"], r["dataset"],
            r["image_path"])
    write_samples(tmp_path / "ours.jsonl", samples)
    assert read_samples(tmp_path / "ours.jsonl") == samples


def test_omnimedvqa_modalities_including_the_record_without_one() -> None:
    by_id = {s.sample_id: s for s in read_omnimedvqa(OMNI)}
    assert by_id["ALL Challenge_0000"].modality == Modality.MICROSCOPY
    assert by_id["Chest CT Scan_0001"].modality == Modality.CT
    assert by_id["Chest CT Scan_0000"].modality == Modality.CT  # modality_type null: from its dataset
    assert {s.task_type for s in by_id.values()} == {TaskType.MODALITY, TaskType.DIAGNOSIS, TaskType.GRADING,
                                                     TaskType.BIO_ATTRIBUTES}


def test_image_checking_is_optional_and_clear_when_required(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"record 0 \(question_id ALL Challenge_0000\): image .* not found"
                                              r".*image_root=.*Images/"):
        read_omnimedvqa(OMNI, image_root=tmp_path, require_images=True)
    for record in map(json.loads, OMNI.open()):
        target = tmp_path / record["image_path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"png")
    samples = read_omnimedvqa(OMNI, image_root=tmp_path, require_images=True)
    assert all(Path(s.image_path).is_file() for s in samples)


def _broken_omni(tmp_path: Path) -> Path:
    records = [json.loads(line) for line in OMNI.open()][:4]
    del records[1]["gt_answer"]
    records[2]["gt_answer"] = "Not an option"
    records[3]["question_type"] = "Counting"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))  # a JSON array, as the original release ships
    return path


def test_bad_records_name_file_record_and_field(tmp_path: Path) -> None:
    path = _broken_omni(tmp_path)
    with pytest.raises(DataFormatError, match=r"broken\.json: record 1 \(question_id .*\): field 'gt_answer' is missing"):
        read_omnimedvqa(path)
    errors: list[RecordError] = []
    samples = read_omnimedvqa(path, errors=errors)
    assert len(samples) == 1
    assert [(e.line, e.field) for e in errors] == [(1, "gt_answer"), (2, "gt_answer"), (3, "question_type")]


def test_option_keys_layout_of_the_original_release(tmp_path: Path) -> None:
    record = json.loads(OMNI.open().readline())
    options = record.pop("options")
    record.update({f"option_{letter}": text for letter, text in zip("ABCD", options)})
    (tmp_path / "o.json").write_text(json.dumps([record]))
    assert read_omnimedvqa(tmp_path / "o.json")[0].options == tuple(options)


def test_vqa_rad() -> None:
    samples = read_vqa_rad(FIXTURES / "vqa_rad_slice.json")
    assert [s.sample_id for s in samples] == ["vqarad-1", "vqarad-2", "vqarad-3", "vqarad-4"]
    assert samples[0].options == ("yes", "no") and samples[0].answer == "yes"
    assert samples[1].task_type == TaskType.MODALITY and samples[1].modality == Modality.XRAY
    assert samples[2].task_type == TaskType.ANATOMY and samples[3].answer == "2"


def test_slake_filters_other_languages_and_reports_them() -> None:
    errors: list[RecordError] = []
    samples = read_slake(FIXTURES / "slake_slice.json", errors=errors)
    assert [s.sample_id for s in samples] == ["slake-11", "slake-12", "slake-14"]
    assert [e.field for e in errors] == ["q_lang"]
    assert samples[0].modality == Modality.MR and samples[2].modality == Modality.XRAY
    assert samples[0].image_path == "imgs/xmlab1/source.jpg" and samples[1].task_type == TaskType.DIAGNOSIS
    assert len(read_slake(FIXTURES / "slake_slice.json", language=None)) == 4


def test_pathvqa_and_pickle_refusal(tmp_path: Path) -> None:
    samples = read_pathvqa(FIXTURES / "pathvqa_slice.jsonl")
    assert {s.modality for s in samples} == {Modality.HISTOPATHOLOGY}
    assert samples[1].options == ("yes", "no") and samples[2].task_type == TaskType.GRADING
    shutil.copy(FIXTURES / "pathvqa_slice.jsonl", tmp_path / "train_vqa.pkl")
    with pytest.raises(DataFormatError, match="pickles, which can run code"):
        read_pathvqa(tmp_path / "train_vqa.pkl")


def test_pmc_vqa_csv() -> None:
    samples = read_pmc_vqa(FIXTURES / "pmc_vqa_slice.csv")
    assert samples[0].options == ("CT scan", "MRI", "Ultrasound", "X-ray") and samples[0].answer == "MRI"
    assert samples[0].task_type == TaskType.MODALITY and samples[0].modality == Modality.MR
    assert samples[1].options[0] == "Liver" and samples[1].answer == "Liver"
    assert samples[2].answer == "Metastasis" and samples[2].task_type == TaskType.DIAGNOSIS
    assert samples[0].image_path == "images/PMC1064097_F1.jpg"
