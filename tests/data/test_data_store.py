"""Pool and sample formats: written and read back losslessly; bad lines named by file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medgr2_ray.data.store import (DataFormatError, RecordError, load_pool, read_dataset, read_samples,
                                   write_dataset, write_samples)
from medgr2_ray.types import Modality, PromptStrategy, Provenance, Sample, TaskType

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_provenance = st.builds(
    Provenance, producer=_text, model_version=st.integers(-1, 10**6), round=st.integers(0, 100),
    prompt_strategy=st.none() | st.sampled_from(PromptStrategy),
    reward=st.none() | st.floats(-6, 10, allow_nan=False), selected=st.none() | st.booleans(),
    parent_id=st.none() | _text)
_sample = st.builds(
    Sample, sample_id=_text, image_id=_text, image_path=_text, question=_text,
    options=st.lists(_text, max_size=5).map(tuple), answer=_text, task_type=st.sampled_from(TaskType),
    modality=st.sampled_from(Modality), rationale=_text, dataset=_text, provenance=_provenance)


@settings(max_examples=40, deadline=None)
@given(samples=st.lists(_sample, max_size=6))
def test_samples_round_trip_losslessly(tmp_path_factory: pytest.TempPathFactory, samples: list[Sample]) -> None:
    path = tmp_path_factory.mktemp("s") / "samples.jsonl"
    write_samples(path, samples)
    assert read_samples(path) == samples


def _sample_line(**changes: object) -> str:
    record = {"sample_id": "s1", "image_id": "i1", "image_path": "a.png", "question": "q?", "options": ["a", "b"],
              "answer": "a", "task_type": "Modality Recognition", "modality": "CT",
              "provenance": {"producer": "template", "reward": 9.5}}
    record.update(changes)
    return json.dumps(record)


def test_bad_lines_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(_sample_line() + "\n" + _sample_line(task_type="Counting") + "\n{not json\n"
                    + _sample_line(options="a,b") + "\n")
    with pytest.raises(DataFormatError, match=r"s\.jsonl:2: field 'task_type': 'Counting' is not one of"):
        read_samples(path)
    errors: list[RecordError] = []
    samples = read_samples(path, errors)
    assert [s.sample_id for s in samples] == ["s1"]
    assert [(e.line, e.field) for e in errors] == [(2, "task_type"), (3, "record"), (4, "options")]
    assert samples[0].provenance.reward == 9.5


def test_dataset_directory_carries_its_images(tmp_path: Path, seed_pool_dir: Path) -> None:
    from medgr2_ray.data.templates import make_template_samples

    pool = load_pool(seed_pool_dir)
    samples = make_template_samples(pool.images[:5], seed=3)
    write_dataset(tmp_path / "ds", samples)
    back = read_dataset(tmp_path / "ds")
    assert [s.image_path for s in back] != [s.image_path for s in samples]  # now inside the dataset dir
    assert all(Path(s.image_path).is_file() and str(tmp_path) in s.image_path for s in back)
    assert [s.question for s in back] == [s.question for s in samples]


def test_load_pool_gives_absolute_paths_and_pixels(seed_pool_dir: Path) -> None:
    pool = load_pool(seed_pool_dir)
    image = pool.images[0]
    assert Path(image.path).is_absolute()
    pixels = pool.read_rgb(image.image_id)
    assert pixels.shape == (image.height, image.width, 3) and pixels.dtype.name == "uint8"


def test_load_pool_errors_name_the_problem(tmp_path: Path, seed_pool_dir: Path) -> None:
    with pytest.raises(DataFormatError, match="pool.jsonl is missing.*seed-pool"):
        load_pool(tmp_path)
    lines = (seed_pool_dir / "pool.jsonl").read_text().splitlines()
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    record = json.loads(lines[0])
    (broken / "pool.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "modality": "Sonar"}) + "\n")
    with pytest.raises(DataFormatError, match=r"pool.jsonl:1: image file .* is missing"):
        load_pool(broken)
    with pytest.raises(DataFormatError, match=r"pool.jsonl:2: field 'modality': 'Sonar'"):
        load_pool(broken, check_files=False)
