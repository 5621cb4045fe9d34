"""Vocabulary mapping: OmniMedVQA's own modality names, DICOM tags and answer phrasings."""

from __future__ import annotations

import json

import pytest

from medgr2_ray.data.vocab import (EXTRA_DISTRACTORS, MODALITY_PHRASES, anatomy_from_dicom, anatomy_region,
                                   modality_from_dicom, modality_from_text, normalise_anatomy, parse_modality)
from medgr2_ray.types import Modality

from data_helpers import FIXTURES


@pytest.mark.parametrize("name, expected", [
    ("CT(Computed Tomography)", Modality.CT),
    ("MR (Mag-netic Resonance Imaging)", Modality.MR),
    ("Microscopy Images", Modality.MICROSCOPY),
    ("X-Ray", Modality.XRAY),
    ("OCT (Optical Coherence Tomography", Modality.OCT),
    ("Fundus Photography", Modality.FUNDUS),
    ("Dermoscopy", Modality.DERMOSCOPY),
    ("Endoscopy", Modality.ENDOSCOPY),
    ("Ultrasound", Modality.ULTRASOUND),
    ("Positron Emission Tomography (PET) scan", Modality.NUCLEAR),
    ("Computed Tomography (CT) scan", Modality.CT),
    ("Color fundus photography", Modality.FUNDUS),
    ("Magnetic Resonance Imaging (MRI)", Modality.MR),
    ("Histology slide microscopy", Modality.HISTOPATHOLOGY),
])
def test_omnimedvqa_and_option_names_map_to_the_vocabulary(name: str, expected: Modality) -> None:
    assert modality_from_text(name) == expected


def test_every_modality_type_in_the_real_omnimedvqa_records_is_understood() -> None:
    names = {json.loads(line)["modality_type"] for line in (FIXTURES / "omnimedvqa_slice.jsonl").open()}
    assert {modality_from_text(n) for n in names if n} == {Modality.CT, Modality.MICROSCOPY}


@pytest.mark.parametrize("tag, expected", [
    ("CT", Modality.CT), ("MR", Modality.MR), ("CR", Modality.XRAY), ("DX", Modality.XRAY),
    ("MG", Modality.XRAY), ("US", Modality.ULTRASOUND), ("NM", Modality.NUCLEAR), ("PT", Modality.NUCLEAR),
    ("OP", Modality.FUNDUS), ("OPT", Modality.OCT), ("SM", Modality.HISTOPATHOLOGY), ("ES", Modality.ENDOSCOPY),
    ("OT", None), ("", None), (None, None),
])
def test_dicom_modality_tags(tag: str | None, expected: Modality | None) -> None:
    assert modality_from_dicom(tag) == expected


def test_every_phrase_and_distractor_reads_back_consistently() -> None:
    """The template bootstrapper relies on this: each phrase maps back to its own modality, and each
    extra distractor maps to nothing or to a modality it declares it covers."""
    for modality, phrases in MODALITY_PHRASES.items():
        for phrase in phrases:
            assert modality_from_text(phrase) == modality, phrase
    for name, covers in EXTRA_DISTRACTORS.items():
        found = modality_from_text(name)
        assert found is None or found in covers, name


def test_parse_modality_names_field_and_choices_on_error() -> None:
    with pytest.raises(ValueError, match=r"record 7: unknown modality 'Thermography'.*CT, MR"):
        parse_modality("Thermography", field="record 7")


def test_anatomy_from_dicom_and_regions() -> None:
    assert anatomy_from_dicom("CHEST") == "chest"
    assert anatomy_from_dicom("CSPINE") == "spine"
    assert anatomy_from_dicom("WHOLE BODY") == "whole body"
    assert anatomy_from_dicom(None) == "unknown"
    assert anatomy_from_dicom("ELBOWX") == "unknown"
    assert normalise_anatomy(" Brain ") == "brain"
    assert anatomy_region("brain") == anatomy_region("head") == "head"
    assert anatomy_region("lung") != anatomy_region("liver")
