"""Helpers of the data-layer tests: real medical files from pydicom-data / scikit-image / nibabel and a
fixed de-identification salt. (A plain module, not conftest, so test files can import it by name.)"""

from __future__ import annotations

import warnings
from pathlib import Path

SALT = b"medgr2-tests-salt-0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures"


def dicom_file(name: str) -> Path:
    """A real DICOM test file shipped by pydicom or pydicom-data."""
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = get_testdata_file(name)
    assert found, f"{name} is not installed (pydicom-data missing?)"
    return Path(found)


def undecodable_dicom() -> bytes:
    """A real MR slice re-wrapped as High-Throughput JPEG 2000, a transfer syntax no installed plugin
    decodes (pylibjpeg-openjpeg is not a dependency): the "missing decoder" case of ingestion."""
    import io

    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.201")
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def skimage_file(name: str) -> Path:
    """A sample image shipped inside scikit-image."""
    import skimage.data

    return Path(skimage.data.data_dir) / name


def nibabel_file(name: str) -> Path:
    """A NIfTI test volume shipped inside nibabel."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name
