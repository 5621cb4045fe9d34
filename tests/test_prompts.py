"""The text protocol: rendered samples parse back to themselves; broken generator output gives a
reason instead of an exception."""

from __future__ import annotations

import pytest

from medgr2_ray.prompts import ParseFailure, parse_generated, render_sample, reward_prompt, solver_prompt
from medgr2_ray.types import Modality, Provenance, Sample, TaskType

PROV = Provenance(producer="generator", model_version=3)


def _sample(**kw: object) -> Sample:
    base = dict(
        sample_id="s1", image_id="img1", image_path="images/img1.png",
        question="Which imaging modality was used?", options=("CT", "MRI", "X-ray", "Ultrasound"),
        answer="MRI", task_type=TaskType.MODALITY, modality=Modality.MR, rationale="T1 contrast.",
        provenance=PROV,
    )
    base.update(kw)
    return Sample(**base)  # type: ignore[arg-type]


def _parse(text: str) -> Sample | ParseFailure:
    return parse_generated(
        text, image_id="img1", image_path="images/img1.png", modality=Modality.MR,
        task=TaskType.MODALITY, provenance=PROV,
    )


def test_render_then_parse_round_trips() -> None:
    original = _sample()
    parsed = _parse(render_sample(original))
    assert isinstance(parsed, Sample)
    assert (parsed.question, parsed.options, parsed.answer, parsed.rationale) == (
        original.question, original.options, original.answer, original.rationale)
    assert parsed.answer_letter == "B"
    assert parsed.provenance == PROV


def test_answer_given_as_text_and_continuation_lines() -> None:
    text = "Question: What is shown\nin this slice?\nOptions: A. CT | B. MRI\nAnswer: mri"
    parsed = _parse(text)
    assert isinstance(parsed, Sample)
    assert parsed.question == "What is shown in this slice?" and parsed.answer == "MRI"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing 'Question:'"),
        ("Question: q\nAnswer: A", "missing 'Options:'"),
        ("Question: q\nOptions: A. CT\nAnswer: A", "fewer than 2 options"),
        ("Question: q\nOptions: A. CT | B. CT\nAnswer: A", "duplicate options"),
        ("Question: q\nOptions: A. CT | B. MRI\nAnswer: E", "not one of the options"),
        ("\x00\x01garbage", "missing"),
    ],
)
def test_broken_output_gives_reason(text: str, reason: str) -> None:
    parsed = _parse(text)
    assert isinstance(parsed, ParseFailure) and reason in parsed.reason


def test_sample_ids_are_stable_and_distinct() -> None:
    a, b = _parse(render_sample(_sample())), _parse(render_sample(_sample()))
    c = _parse(render_sample(_sample(question="Another question?")))
    assert isinstance(a, Sample) and isinstance(b, Sample) and isinstance(c, Sample)
    assert a.sample_id == b.sample_id != c.sample_id


def test_solver_and_reward_prompts_show_what_each_model_needs() -> None:
    s = _sample()
    solver = solver_prompt(s)
    assert "B. MRI" in solver and "Answer: " not in solver  # the solver must not see the answer
    assert "Answer: B" in reward_prompt(s)  # the reward model judges the answer
