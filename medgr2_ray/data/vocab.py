"""Controlled vocabularies of the data layer: imaging modality and anatomy.

Everything that names a modality — OmniMedVQA's `modality_type` strings ("CT(Computed Tomography)",
"MR (Mag-netic Resonance Imaging)", "Microscopy Images", ...), DICOM Modality tags (CT, MR, CR, DX, US,
NM, PT, OP, OPT, SM, ...), the answer phrasings OmniMedVQA uses in its options ("Computed Tomography
(CT) scan", "Color fundus photography", ...) and free text in other benchmarks — is mapped onto
`types.Modality` here, and only here. Anatomy is a small set of canonical lower-case labels with the
body region each belongs to, so that distractors never overlap the truth ("brain" is not a wrong answer
for a "head" image). Pure Python: no Ray, no pixels.
"""

from __future__ import annotations

import re

from medgr2_ray.types import Modality

# DICOM (0008,0060) Modality defined terms -> our vocabulary. Secondary capture (OT, SC) and
# documents carry no modality information, so they map to None and the caller decides.
_DICOM_MODALITY: dict[str, Modality] = {
    "CT": Modality.CT,
    "MR": Modality.MR,
    "CR": Modality.XRAY, "DX": Modality.XRAY, "RG": Modality.XRAY, "MG": Modality.XRAY,
    "XA": Modality.XRAY, "RF": Modality.XRAY, "PX": Modality.XRAY, "IO": Modality.XRAY,
    "DF": Modality.XRAY, "DS": Modality.XRAY,
    "US": Modality.ULTRASOUND, "IVUS": Modality.ULTRASOUND, "EC": Modality.ULTRASOUND,
    "NM": Modality.NUCLEAR, "PT": Modality.NUCLEAR, "ST": Modality.NUCLEAR,
    "OP": Modality.FUNDUS, "XC": Modality.OTHER,
    "OPT": Modality.OCT, "OCT": Modality.OCT, "IVOCT": Modality.OCT,
    "SM": Modality.HISTOPATHOLOGY,  # slide microscopy (whole-slide imaging)
    "GM": Modality.MICROSCOPY,  # general microscopy
    "ES": Modality.ENDOSCOPY, "EN": Modality.ENDOSCOPY,
}

# Keyword rules for free-text names, tried in order; the first match wins. Order matters:
# "optical coherence" must win over "coherence"-less rules, "pet" must not match "carpet".
_TEXT_RULES: tuple[tuple[str, Modality], ...] = (
    (r"optical coherence|\boct\b", Modality.OCT),
    (r"fundus|retinal photo", Modality.FUNDUS),
    (r"dermoscop|dermatoscop", Modality.DERMOSCOPY),
    (r"endoscop|colonoscop|gastroscop|laparoscop|arthroscop", Modality.ENDOSCOPY),
    (r"histopath|histolog|patholog|h&e|\bihc\b|immunohisto|whole.?slide", Modality.HISTOPATHOLOGY),
    (r"microscop", Modality.MICROSCOPY),
    (r"ultraso|sonograph|echocardio|doppler|\bus\b", Modality.ULTRASOUND),
    (r"nuclear|\bpet\b|positron|spect|scintigra|bone scan", Modality.NUCLEAR),
    (r"mag-?netic|\bmri?\b|\bmr\b", Modality.MR),
    (r"computed tomograph|\bct\b", Modality.CT),
    (r"x-?ray|radiograph|mammogra|fluoroscop|angiogra|\bcxr\b|\bdx\b|\bcr\b", Modality.XRAY),
)

# How OmniMedVQA's options name each modality (counted from the authors' released questions); the
# template bootstrapper draws the correct option's wording from here so phrasing varies like theirs.
MODALITY_PHRASES: dict[Modality, tuple[str, ...]] = {
    Modality.CT: ("Computed Tomography (CT)", "CT scan", "Computed Tomography (CT) scan", "CT"),
    Modality.MR: ("Magnetic Resonance Imaging (MRI)", "MRI", "MRI scan"),
    Modality.XRAY: ("X-ray", "X-ray imaging", "Radiography"),
    Modality.ULTRASOUND: ("Ultrasound", "Ultrasound imaging"),
    Modality.NUCLEAR: ("Nuclear medicine scan", "Scintigraphy"),
    Modality.FUNDUS: ("Color fundus photography", "Fundus photography"),
    Modality.OCT: ("Optical Coherence Tomography (OCT)", "OCT"),
    Modality.HISTOPATHOLOGY: ("Histopathology", "Histology slide microscopy"),
    Modality.MICROSCOPY: ("Microscopy", "Light microscopy"),
    Modality.DERMOSCOPY: ("Dermoscopy", "Dermoscopic imaging"),
    Modality.ENDOSCOPY: ("Endoscopy",),
}

# Non-imaging or sub-type distractors OmniMedVQA mixes in. Each lists the modalities it would be
# (partly) right for, so it is never offered as a wrong answer for those.
EXTRA_DISTRACTORS: dict[str, frozenset[Modality]] = {
    "Electroencephalography (EEG)": frozenset(),
    "Electrocardiogram (ECG)": frozenset(),
    "Thermography": frozenset(),
    "Blood test": frozenset(),
    "Mammography": frozenset({Modality.XRAY}),
    "Fluoroscopy": frozenset({Modality.XRAY}),
    "Angiography": frozenset({Modality.XRAY, Modality.CT, Modality.MR}),
    "Positron Emission Tomography (PET) scan": frozenset({Modality.NUCLEAR}),
}

# Canonical anatomy labels -> body region. Distractors come from other regions only.
ANATOMY_REGION: dict[str, str] = {
    "head": "head", "brain": "head", "skull": "head",
    "eye": "eye", "retina": "eye",
    "neck": "neck",
    "chest": "thorax", "lung": "thorax", "heart": "thorax", "breast": "thorax",
    "abdomen": "abdomen", "liver": "abdomen", "kidney": "abdomen", "pancreas": "abdomen",
    "colon": "abdomen", "stomach": "abdomen",
    "pelvis": "pelvis", "uterus": "pelvis", "fetus": "pelvis",
    "spine": "spine",
    "shoulder": "upper limb", "hand": "upper limb", "elbow": "upper limb",
    "knee": "lower limb", "leg": "lower limb", "foot": "lower limb", "hip": "lower limb",
    "whole body": "whole body",
    "skin": "skin",
    "cell": "cell", "tissue": "tissue",
}

# DICOM (0018,0015) BodyPartExamined defined terms (and common variants) -> canonical anatomy.
_DICOM_BODY_PART: dict[str, str] = {
    "HEAD": "head", "BRAIN": "brain", "SKULL": "skull", "HEADNECK": "head", "EYE": "eye",
    "NECK": "neck", "CHEST": "chest", "THORAX": "chest", "LUNG": "lung", "HEART": "heart",
    "BREAST": "breast", "ABDOMEN": "abdomen", "LIVER": "liver", "KIDNEY": "kidney",
    "PANCREAS": "pancreas", "COLON": "colon", "STOMACH": "stomach", "PELVIS": "pelvis",
    "UTERUS": "uterus", "SPINE": "spine", "CSPINE": "spine", "TSPINE": "spine", "LSPINE": "spine",
    "SSPINE": "spine", "SHOULDER": "shoulder", "HAND": "hand", "ELBOW": "elbow", "KNEE": "knee",
    "LEG": "leg", "FOOT": "foot", "HIP": "hip", "EXTREMITY": "leg", "WHOLEBODY": "whole body",
    "WHOLE BODY": "whole body", "SKIN": "skin",
}

UNKNOWN_ANATOMY = "unknown"


def modality_from_dicom(tag: str | None) -> Modality | None:
    """Map a DICOM Modality tag (e.g. "CR") to the vocabulary; None for OT/SC/unknown tags."""
    if not tag:
        return None
    return _DICOM_MODALITY.get(str(tag).strip().upper())


def modality_from_text(text: str | None) -> Modality | None:
    """Map a free-text modality name (OmniMedVQA's modality_type, an option, a DICOM tag) to the
    vocabulary, or None when nothing matches."""
    if not text:
        return None
    cleaned = str(text).strip()
    for member in Modality:  # exact value or enum name first ("X-Ray", "XRAY")
        if cleaned.lower() in (member.value.lower(), member.name.lower()):
            return member
    tagged = modality_from_dicom(cleaned)
    if tagged is not None:
        return tagged
    lowered = cleaned.lower()
    for pattern, modality in _TEXT_RULES:
        if re.search(pattern, lowered):
            return modality
    return None


def parse_modality(text: str | None, *, field: str = "modality") -> Modality:
    """Like `modality_from_text` but raises a ValueError naming the field and the accepted names."""
    found = modality_from_text(text)
    if found is None:
        names = ", ".join(m.value for m in Modality)
        raise ValueError(f"{field}: unknown modality {text!r}; use one of: {names} (or a DICOM tag)")
    return found


def display_name(modality: Modality) -> str:
    """A person-readable name, e.g. 'Computed Tomography (CT)'."""
    return MODALITY_PHRASES.get(modality, (modality.value,))[0]


def anatomy_from_dicom(body_part: str | None) -> str:
    """Map a DICOM BodyPartExamined value to a canonical anatomy label ('unknown' when absent)."""
    if not body_part:
        return UNKNOWN_ANATOMY
    key = str(body_part).strip().upper()
    return _DICOM_BODY_PART.get(key, _DICOM_BODY_PART.get(key.replace(" ", ""), UNKNOWN_ANATOMY))


def normalise_anatomy(label: str | None) -> str:
    """Lower-case and trim an anatomy label; map DICOM-style terms; unknown labels stay as given."""
    if not label:
        return UNKNOWN_ANATOMY
    lowered = str(label).strip().lower()
    if lowered in ANATOMY_REGION:
        return lowered
    mapped = anatomy_from_dicom(label)
    return mapped if mapped != UNKNOWN_ANATOMY else lowered


def anatomy_region(label: str) -> str | None:
    """The body region of a canonical anatomy label, or None when it is not in the vocabulary."""
    return ANATOMY_REGION.get(label)
