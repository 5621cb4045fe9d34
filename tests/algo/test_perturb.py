"""The graded-data builder: each corruption is what it claims, targets are the configured ones, and
the result is deterministic by seed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medgr2_ray.algo.perturb import KINDS, alter_findings, build_graded_samples, garble, shuffle_words
from medgr2_ray.config import GradedDataConfig
from medgr2_ray.types import Modality, Provenance, Sample, TaskType


def _samples() -> list[Sample]:
    return [
        Sample(sample_id="s1", image_id="img-ct", image_path="ct.png", question="Which imaging modality produced this image?",
               options=("CT", "MRI", "X-ray", "Ultrasound"), answer="CT", task_type=TaskType.MODALITY,
               modality=Modality.CT, rationale="Axial slices with CT attenuation values.",
               provenance=Provenance(producer="generator", model_version=3, reward=8.0)),
        Sample(sample_id="s2", image_id="img-mr", image_path="mr.png", question="Where is the lesion?",
               options=(), answer="Left frontal lobe", task_type=TaskType.ANATOMY, modality=Modality.MR,
               rationale="A bright lesion in the left hemisphere."),
        Sample(sample_id="s3", image_id="img-ct2", image_path="ct2.png", question="Is there an effusion?",
               options=("Yes", "No"), answer="Yes", task_type=TaskType.DIAGNOSIS, modality=Modality.CT),
        Sample(sample_id="s4", image_id="img-ct2", image_path="ct2.png", question="Any mass?", options=(),
               answer="spiculated mass", task_type=TaskType.DIAGNOSIS, modality=Modality.CT),
    ]


def test_four_graded_copies_per_sample_with_configured_targets() -> None:
    cfg = GradedDataConfig(faithful=9.0, perturbed=5.0, incoherent=1.0, irrelevant=-3.0)
    graded = build_graded_samples(_samples(), cfg, seed=0)
    assert len(graded) == 16
    assert [g.kind for g in graded[:4]] == list(KINDS)
    assert {g.kind: g.target for g in graded} == {"faithful": 9.0, "perturbed": 5.0, "incoherent": 1.0, "irrelevant": -3.0}
    ids = [g.sample.sample_id for g in graded]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_each_corruption_is_what_it_claims(seed: int) -> None:
    originals = {s.sample_id: s for s in _samples()}
    for g in build_graded_samples(list(originals.values()), GradedDataConfig(), seed=seed):
        s = g.sample
        orig = originals[s.provenance.parent_id or s.sample_id]
        if g.kind == "faithful":
            assert s == orig
            continue
        assert s.provenance.producer == f"perturb:{g.kind}" and s.provenance.reward is None
        if g.kind == "perturbed":
            assert s.answer != orig.answer and s.image_id == orig.image_id and s.question == orig.question
            if orig.options:
                assert s.answer in orig.options and s.options == orig.options
        elif g.kind == "incoherent":
            assert s.question != orig.question
            assert sorted(s.question.replace(" ", "")) == sorted(orig.question.replace(" ", "")) or "garbled" in g.detail
            assert (s.answer, s.options, s.image_id) == (orig.answer, orig.options, orig.image_id)
        elif g.kind == "irrelevant":
            assert s.image_id != orig.image_id and s.image_path != orig.image_path
            assert (s.question, s.answer, s.options, s.rationale) == (orig.question, orig.answer, orig.options, orig.rationale)


def test_perturbed_rationale_follows_the_wrong_answer_and_findings_flip() -> None:
    graded = {(g.sample.provenance.parent_id or g.sample.sample_id, g.kind): g for g in
              build_graded_samples(_samples(), GradedDataConfig(), seed=3)}
    ct = graded[("s1", "perturbed")].sample
    assert "CT" not in ct.rationale and ct.answer in ct.rationale
    free = graded[("s2", "perturbed")].sample
    assert free.answer == "Right frontal lobe" and "right hemisphere" in free.rationale
    assert graded[("s4", "perturbed")].sample.answer == "no spiculated mass"
    assert graded[("s3", "perturbed")].sample.answer == "No"


def test_irrelevant_prefers_another_modality() -> None:
    for seed in range(5):
        for g in build_graded_samples(_samples(), GradedDataConfig(), seed=seed):
            if g.kind == "irrelevant" and g.sample.sample_id.startswith(("s1", "s3", "s4")):
                assert g.sample.image_id == "img-mr"  # the only non-CT image


def test_deterministic_by_seed_and_independent_of_batch() -> None:
    a = build_graded_samples(_samples(), GradedDataConfig(), seed=11)
    b = build_graded_samples(_samples(), GradedDataConfig(), seed=11)
    assert a == b
    seeds = [build_graded_samples(_samples(), GradedDataConfig(), seed=k) for k in range(6)]
    assert len({tuple(g.sample.question for g in run) for run in seeds}) > 1
    # the corruptions of one sample do not depend on the order of the batch
    rev = build_graded_samples(list(reversed(_samples())), GradedDataConfig(), seed=11)
    pick = lambda run: {g.sample.sample_id: g.sample for g in run if g.kind in ("perturbed", "incoherent")}  # noqa: E731
    assert pick(a) == pick(rev)


def test_single_image_is_refused_with_a_reason() -> None:
    one = [s for s in _samples() if s.image_id == "img-ct2"]
    with pytest.raises(ValueError, match="at least two images"):
        build_graded_samples(one, GradedDataConfig(), seed=0)


def test_alter_findings() -> None:
    assert alter_findings("Left upper lobe, BENIGN, Normal") == "Right lower lobe, MALIGNANT, Abnormal"
    assert alter_findings("abnormal") == "normal"  # whole words only: 'normal' inside 'abnormal' untouched


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="ab cdE?.", max_size=30), seed=st.integers(0, 1000))
def test_garble_and_shuffle_always_change_the_text(text: str, seed: int) -> None:
    rng = random.Random(seed)
    assert garble(text, rng) != text
    assert shuffle_words(text, rng) != text
