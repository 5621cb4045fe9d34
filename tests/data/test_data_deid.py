"""De-identification on pydicom's own test files, which carry (fake) patient names and IDs."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from data_helpers import SALT, dicom_file
from medgr2_ray.data.deid import deidentify, hash_uid


def _all_elements(ds: Dataset):
    """Every element, nested sequences included."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _all_elements(item)


def files_with_patient_names() -> list[Path]:
    """Every installed pydicom / pydicom-data test file whose header has a non-empty PatientName."""
    from pydicom.data import get_testdata_files

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in get_testdata_files():
            path = Path(name)
            if not path.is_file():
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                if str(ds.get("PatientName", "") or "").strip("^ "):
                    out.append(path)
            except Exception:  # non-DICOM helper files (json, icc, dumps) ship beside the tests
                continue
    return sorted(out)


def identifiers(ds: Dataset) -> set[str]:
    """The patient's name (whole and each component of >= 3 characters) and IDs, as stored."""
    found: set[str] = set()
    for elem in _all_elements(ds):
        if elem.VR == "PN" and elem.value:
            text = str(elem.value)
            found.add(text)
            found.update(p for p in text.replace("=", "^").split("^") if len(p.strip()) >= 3)
        if elem.keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber") and elem.value:
            found.add(str(elem.value))
    return {f.strip() for f in found if len(f.strip()) >= 3}


def test_names_ids_dates_are_removed_from_every_file_with_a_patient_name() -> None:
    files = files_with_patient_names()
    assert len(files) > 100  # pydicom + pydicom-data ship well over a hundred such files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path, force=True)
            secrets = identifiers(ds)
            study = str(ds.get("StudyInstanceUID", ""))
            report = deidentify(ds, SALT)
            remaining = list(_all_elements(ds))
            assert not [e for e in remaining if e.VR in ("PN", "DA", "DT", "TM")], path.name
            assert not [e for e in remaining if e.tag.is_private], path.name
            values = [str(e.value).strip() for e in remaining if e.VR not in ("OB", "OW", "OF", "UN", "SQ")]
            # short secrets ("134") are compared as whole values: as substrings they match any number
            leaked = [s for s in secrets if any(s == v or (len(s) >= 6 and s in v) for v in values)]
            assert not leaked, f"{path.name}: {leaked}"
            assert report.removed > 0
            if study:
                assert str(ds.StudyInstanceUID) == hash_uid(study, SALT) != study
            assert ds.PatientIdentityRemoved == "YES"


def test_uid_hashing_is_stable_per_salt_and_keeps_studies_together() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = pydicom.dcmread(dicom_file("MR_small.dcm"))
        b = pydicom.dcmread(dicom_file("MR_small_RLE.dcm"))  # same study, other encoding
    assert a.StudyInstanceUID == b.StudyInstanceUID
    other = copy.deepcopy(a)
    deidentify(a, SALT)
    deidentify(b, SALT)
    deidentify(other, b"another-installation-salt")
    assert a.StudyInstanceUID == b.StudyInstanceUID  # slices of one study stay one study
    assert a.StudyInstanceUID != other.StudyInstanceUID  # without the salt the mapping is unknown
    assert str(a.StudyInstanceUID).startswith("2.25.")
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # class UIDs name a standard: kept


@pytest.mark.parametrize("value, expected", [("YES", "YES"), ("NO", "NO"), (None, "unknown")])
def test_burned_in_annotation_is_flagged(value: str | None, expected: str) -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    if value is not None:
        ds.BurnedInAnnotation = value
    assert deidentify(ds, SALT).burned_in_annotation == expected
    assert "PatientName" not in ds


def test_empty_salt_is_refused() -> None:
    with pytest.raises(ValueError, match="salt"):
        deidentify(Dataset(), b"")
