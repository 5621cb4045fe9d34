"""Deliberately broken files of every kind: each is skipped with its reason, none stops the batch."""

from __future__ import annotations

import gzip
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from data_helpers import SALT, dicom_file, skimage_file, undecodable_dicom
from medgr2_ray.data.ingest import IngestOptions, file_key, ingest_paths
from medgr2_ray.data.store import load_pool


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _dicom_with(name: str, **changes: object) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(dicom_file(name))
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _broken_files(root: Path) -> dict[str, str]:
    """Write one file per failure mode; returns file name -> expected reason."""
    good_png = skimage_file("ihc.png").read_bytes()
    ct = dicom_file("CT_small.dcm").read_bytes()
    corrupt_png = bytearray(good_png)
    corrupt_png[200:260] = bytes(60)  # inside IDAT: the CRC no longer matches
    float_nan = io.BytesIO()
    Image.fromarray(np.full((40, 40), np.nan, np.float32), mode="F").save(float_nan, format="TIFF")
    files = {
        "empty.dcm": (b"", "empty"),
        "empty.png": (b"", "empty"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated"),
        "truncated.jpg": (skimage_file("retina.jpg").read_bytes()[:30000], "truncated"),
        "truncated.dcm": (ct[: len(ct) - 9000], "truncated"),
        "corrupt.dcm": (b"\0" * 128 + b"DICM" + bytes(np.random.default_rng(1).integers(0, 256, 3000, np.uint8)),
                        "corrupt"),
        "corrupt.png": (bytes(corrupt_png), "corrupt"),
        "notes.txt": (b"patient list\nnothing to see\n", "not_an_image"),
        "fake.png": (b"this is text pretending to be a PNG", "not_an_image"),
        "report.dcm": (dicom_file("test-SR.dcm").read_bytes(), "no_pixel_data"),
        "bomb.png": (_png_claiming(100_000, 100_000), "too_large"),
        "big_zeros.png": (_png_bytes(np.zeros((1500, 1500), np.uint8)), "too_large"),
        "huge.dcm": (_dicom_with("CT_small.dcm", Rows=60000, Columns=60000), "too_large"),
        "bomb.nii.gz": (gzip.compress(bytes(3 << 20)), "too_large"),
        "constant.png": (_png_bytes(np.full((64, 64), 128, np.uint8)), "constant"),
        "nan.tif": (float_nan.getvalue(), "nonfinite"),
        "htj2k.dcm": (undecodable_dicom(), "missing_decoder"),
        "tiny.png": (_png_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8)), "too_small"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    (root / "good.dcm").write_bytes(ct)
    (root / "sub").mkdir()
    (root / "sub" / "good.png").write_bytes(good_png)
    return {name: reason for name, (_, reason) in files.items()}


def test_every_broken_file_is_skipped_with_its_reason_and_the_rest_is_ingested(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    expected = _broken_files(inputs)
    options = IngestOptions(salt=SALT, max_pixels=2_000_000, max_file_bytes=2 << 20)
    report = ingest_paths([inputs], tmp_path / "pool", options)
    by_key = {s.file_key: s for s in report.skipped}
    got = {name: by_key[file_key(inputs / name, SALT)].reason for name in expected
           if file_key(inputs / name, SALT) in by_key}
    assert got == expected
    assert report.files_seen == len(expected) + 2
    assert report.files_ingested == 2 and report.images_written == 2
    pool = load_pool(tmp_path / "pool")
    assert len(pool) == 2
    assert load_pool(tmp_path / "pool").report["skipped_by_reason"]["too_large"] == 4


def test_missing_decoder_message_names_the_plugin_to_install(tmp_path: Path) -> None:
    (tmp_path / "htj2k.dcm").write_bytes(undecodable_dicom())
    report = ingest_paths([tmp_path / "htj2k.dcm"], tmp_path / "pool", IngestOptions(salt=SALT))
    [skipped] = report.skipped
    assert "pip install" in skipped.message and "pylibjpeg-openjpeg" in skipped.message
    assert "1.2.840.10008.1.2.4.201" in skipped.message


def test_existing_pool_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    ingest_paths([dicom_file("CT_small.dcm")], tmp_path / "pool", IngestOptions(salt=SALT))
    with pytest.raises(FileExistsError, match="already holds a pool"):
        ingest_paths([dicom_file("CT_small.dcm")], tmp_path / "pool", IngestOptions(salt=SALT))
    ingest_paths([dicom_file("MR_small.dcm")], tmp_path / "pool", IngestOptions(salt=SALT), overwrite=True)
    assert load_pool(tmp_path / "pool").counts_by_modality() == {"MR": 1}


def test_a_missing_input_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ingest_paths([tmp_path / "does-not-exist"], tmp_path / "pool", IngestOptions(salt=SALT))
