"""The PHI test: ingest every pydicom test file that has a PatientName, write a dataset from the pool,
then look at every stored byte: none of those names or IDs may appear."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom

from data_helpers import SALT
from medgr2_ray.data.ingest import IngestOptions, ingest_paths
from medgr2_ray.data.store import load_pool, write_dataset
from medgr2_ray.data.templates import make_template_samples
from test_data_deid import files_with_patient_names


# Words the test files use *as* name components that are also ordinary words of our own text
# ("Modality^LUT^Test", "Last Name^First Name"); the full names are still checked.
_PLACEHOLDER_WORDS = frozenset({"Anonymized", "Anonymous", "First", "Last", "First Name", "Last Name",
                                "Firstname", "Lastname", "NAME", "PATIENT", "Modality", "Test", "Perfusion"})


def _secrets(files: list[Path]) -> set[str]:
    """Patient names (whole, and components of >= 4 characters), patient IDs and accession numbers."""
    found: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            name = str(ds.get("PatientName", "") or "")
            found.add(name)
            found.update(part for part in name.replace("=", "^").split("^") if len(part) >= 4)
            for key in ("PatientID", "AccessionNumber", "OtherPatientIDs"):
                value = ds.get(key)
                if value:
                    found.add(str(value))
    return {s.strip() for s in found if len(s.strip()) >= 4} - _PLACEHOLDER_WORDS


def _png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def test_no_stored_byte_of_pool_or_dataset_contains_a_name_or_id(tmp_path: Path) -> None:
    files = files_with_patient_names()
    secrets = _secrets(files)
    assert {"Doe^Peter", "Citizen^Jan", "Lestrade^G", "98890234"} <= secrets  # the test bites
    # copies under names that are themselves identifying: paths must not leak either
    inputs = tmp_path / "Doe^Peter_98890234"
    inputs.mkdir()
    for n, path in enumerate(files):
        (inputs / f"{n:03d}_{path.name}").write_bytes(path.read_bytes())
    report = ingest_paths([inputs], tmp_path / "pool", IngestOptions(salt=SALT))
    assert report.images_written > 30
    pool = load_pool(tmp_path / "pool")
    write_dataset(tmp_path / "dataset", make_template_samples(pool.images, seed=0))

    stored = [p for root in (tmp_path / "pool", tmp_path / "dataset") for p in root.rglob("*") if p.is_file()]
    assert len(stored) > 60
    for path in stored:
        data = path.read_bytes()
        if path.suffix == ".png":
            # pixels are compressed noise to a substring search; what can hold text is a text chunk
            assert set(_png_chunk_types(data)) <= {b"IHDR", b"IDAT", b"IEND"}, path.name
            texts = [s for s in secrets if len(s) >= 8]
        else:
            texts = sorted(secrets)
        for secret in texts:
            if secret.isdigit() and len(secret) < 6:
                # short numbers ("0010") occur in any text as tag numbers; look for them as a value
                assert f'"{secret}"'.encode() not in data, f"{secret!r} found as a value in {path}"
                continue
            assert secret.encode() not in data, f"{secret!r} found in {path}"
            assert secret.encode("utf-16-le") not in data, f"{secret!r} (utf-16) found in {path}"
