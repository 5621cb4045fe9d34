"""Ingestion of real DICOM (pydicom-data), raster (scikit-image) and NIfTI (nibabel) files, with
expected pixels computed independently from the stored values and the windowing rules."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from data_helpers import SALT, dicom_file, nibabel_file, skimage_file
from medgr2_ray.data.ingest import IngestError, IngestOptions, decode_bytes, ingest_paths
from medgr2_ray.data.decoders import frame_indices
from medgr2_ray.data.store import load_pool
from medgr2_ray.types import Modality

OPTS = IngestOptions(salt=SALT, max_side=4096)


def _read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(dicom_file(name))


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _expected_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Independent statement of the linear window: 0 at low, 255 at high, rounded half up."""
    return np.floor(np.clip((values - low) / (high - low), 0, 1) * 255 + 0.5).astype(np.uint8)


def _single(data: bytes, name: str, options: IngestOptions = OPTS):
    out = decode_bytes(data, name, options)
    assert len(out) == 1
    rgb = out[0].rgb
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    return out[0]


def test_ct_without_window_uses_rescaled_hu_and_the_soft_tissue_default() -> None:
    ds = _read("CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    got = _single(dicom_file("CT_small.dcm").read_bytes(), "CT_small.dcm")
    assert got.modality == Modality.CT and got.extra["window"] == "ct-default:40/400"
    np.testing.assert_array_equal(got.rgb[..., 0], _expected_window(hu, -160, 240))
    assert (got.rgb[..., 0] == got.rgb[..., 2]).all()


def test_slope_intercept_and_the_files_own_window() -> None:
    ds = _read("CT_small.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = 2, -2048
    ds.WindowCenter, ds.WindowWidth = 100, 500
    got = _single(_to_bytes(ds), "x.dcm")
    values = ds.pixel_array.astype(np.float64) * 2 - 2048
    assert got.extra["window"] == "file:100/500"
    np.testing.assert_array_equal(got.rgb[..., 0], _expected_window(values, -150, 350))


def test_monochrome1_is_inverted() -> None:
    ds = _read("CT_small.dcm")
    normal = _single(_to_bytes(ds), "a.dcm").rgb
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = _single(_to_bytes(ds), "b.dcm").rgb
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_real_monochrome1_radiograph_shows_high_values_dark() -> None:
    raw = _read("RG1_UNCR.dcm").pixel_array
    got = _single(dicom_file("RG1_UNCR.dcm").read_bytes(), "RG1_UNCR.dcm")
    assert got.modality == Modality.XRAY and got.anatomy == "chest"
    gray = got.rgb[..., 0]
    assert gray.shape == raw.shape
    assert gray[np.unravel_index(raw.argmax(), raw.shape)] < gray[np.unravel_index(raw.argmin(), raw.shape)]


def test_mr_uses_its_voi_window() -> None:
    ds = _read("MR_small.dcm")
    got = _single(dicom_file("MR_small.dcm").read_bytes(), "MR_small.dcm")
    assert got.modality == Modality.MR and got.extra["window"] == "file:600/1600"
    np.testing.assert_array_equal(got.rgb[..., 0], _expected_window(ds.pixel_array.astype(float), -200, 1400))


def test_ultrasound_rgb_is_kept_exactly() -> None:
    got = _single(dicom_file("US1_UNCR.dcm").read_bytes(), "US1_UNCR.dcm")
    assert got.modality == Modality.ULTRASOUND
    np.testing.assert_array_equal(got.rgb, _read("US1_UNCR.dcm").pixel_array)


def test_palette_colour_ultrasound_becomes_colour() -> None:
    got = _single(dicom_file("OBXXXX1A.dcm").read_bytes(), "OBXXXX1A.dcm")
    assert (got.rgb[..., 0] != got.rgb[..., 2]).any()


def test_multiframe_ybr_jpeg_is_sampled_into_rgb_frames() -> None:
    data = dicom_file("examples_ybr_color.dcm").read_bytes()  # 30 frames, YBR_FULL_422, JPEG baseline
    frames = decode_bytes(data, "x.dcm", IngestOptions(salt=SALT, max_frames=4))
    assert [f.extra["frame"] for f in frames] == ["0", "10", "19", "29"]
    assert len({f.study_key for f in frames}) == 1 and frames[0].study_key
    assert all(f.rgb.shape == (240, 320, 3) for f in frames)
    assert frame_indices(3, 8) == [0, 1, 2]


def test_nuclear_medicine_and_downscaling() -> None:
    got = _single(dicom_file("JPEG2000_UNC.dcm").read_bytes(), "nm.dcm", IngestOptions(salt=SALT, max_side=512))
    assert got.modality == Modality.NUCLEAR and got.anatomy == "whole body"
    assert max(got.rgb.shape[:2]) == 512  # 1024 x 256 halved


def test_scikit_image_rgb_fundus_photograph() -> None:
    data = skimage_file("retina.jpg").read_bytes()
    got = _single(data, "retina.jpg", IngestOptions(salt=SALT, max_side=4096, modality=Modality.FUNDUS,
                                                     anatomy="retina"))
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(got.rgb, np.asarray(im.convert("RGB")))
    assert got.modality == Modality.FUNDUS and got.anatomy == "retina" and got.study_key == ""


def test_nifti_brain_gives_slices_along_each_axis() -> None:
    data = nibabel_file("anatomical.nii").read_bytes()
    out = decode_bytes(data, "anatomical.nii", IngestOptions(salt=SALT, modality=Modality.MR, nifti_slices=2))
    assert {d.extra["axis"] for d in out} == {"sagittal", "coronal", "axial"}
    assert len(out) == 6 and all(d.modality == Modality.MR for d in out)


def _nifti_bytes(volume: np.ndarray) -> bytes:
    return nib.Nifti1Image(volume, np.eye(4)).to_bytes()


def test_nifti_with_some_nan_is_kept_and_counted_all_nan_is_refused() -> None:
    vol = np.random.default_rng(0).normal(size=(32, 32, 20)).astype(np.float32)
    vol[:4] = np.nan
    out = decode_bytes(_nifti_bytes(vol), "v.nii", IngestOptions(salt=SALT))
    assert out and out[0].extra["nonfinite_pixels"] == str(4 * 32 * 20)
    with pytest.raises(IngestError) as err:
        decode_bytes(_nifti_bytes(np.full((32, 32, 8), np.nan, np.float32)), "v.nii", IngestOptions(salt=SALT))
    assert err.value.reason == "nonfinite"


def test_ingest_paths_writes_a_loadable_pool(tmp_path: Path) -> None:
    files = [dicom_file("CT_small.dcm"), dicom_file("MR_small.dcm"), dicom_file("MR_small_RLE.dcm")]
    report = ingest_paths(files, tmp_path / "pool", IngestOptions(salt=SALT))
    assert (report.files_seen, report.files_ingested, report.images_written) == (3, 3, 2)
    assert report.duplicates == 1  # MR_small_RLE holds the same pixels as MR_small
    pool = load_pool(tmp_path / "pool")
    assert pool.counts_by_modality() == {"CT": 1, "MR": 1}
    assert all(i.source.startswith("file:f-") and "MR_small" not in i.source for i in pool.images)
    assert pool.read_rgb(pool.images[0]).shape == (pool.images[0].height, pool.images[0].width, 3)


def _rle_fragments() -> tuple[pydicom.Dataset, list[bytes], np.ndarray]:
    """A real 10-frame MR (emri_small.dcm) as RLE Lossless: the dataset, one fragment per frame, and the
    stored frames the fragments must decode to."""
    from pydicom.encaps import generate_fragments
    from pydicom.uid import RLELossless

    ds = _read("emri_small.dcm")
    frames = ds.pixel_array.copy()
    ds.compress(RLELossless)
    return ds, list(generate_fragments(ds.PixelData))[1:], frames


def _with_table(ds: pydicom.Dataset, fragments: list[bytes], offsets: list[int]) -> bytes:
    """The file with these fragments behind an offset table of `offsets` (right or wrong)."""
    from pydicom.encaps import encapsulate

    table = np.asarray(offsets, dtype="<u4").tobytes()
    items = encapsulate(fragments, has_bot=False)[8:]  # without the empty table item
    ds.PixelData = b"\xfe\xff\x00\xe0" + len(table).to_bytes(4, "little") + table + items
    return _to_bytes(ds)


def test_an_offset_table_that_misses_its_items_is_rebuilt_from_the_items() -> None:
    # As GDCM's X-ray angiogram 00191113.dcm (in the seed pool): n+1 offsets, each one byte past its item.
    ds, fragments, frames = _rle_fragments()
    starts = np.cumsum([0] + [8 + len(f) for f in fragments]).tolist()  # item starts, then the end
    good = _with_table(ds, fragments, starts[:-1])
    broken = _with_table(ds, fragments, [0] + [s + 1 for s in starts[1:]])
    with pytest.raises((ValueError, StopIteration)), warnings.catch_warnings():  # pydicom alone cannot
        warnings.simplefilter("ignore")
        pydicom.dcmread(io.BytesIO(broken)).pixel_array
    opts = IngestOptions(salt=SALT, max_side=4096, max_frames=10)
    want, got = decode_bytes(good, "good.dcm", opts), decode_bytes(broken, "broken.dcm", opts)
    assert len(got) == len(want) == len(frames) == 10
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.rgb, b.rgb)
    assert not np.array_equal(got[0].rgb, got[5].rgb)  # each frame its own, not frame 0 again


def test_fewer_fragments_than_frames_is_refused_with_what_to_do() -> None:
    ds, fragments, _ = _rle_fragments()
    starts = np.cumsum([0] + [8 + len(f) for f in fragments[:-1]]).tolist()
    short = _with_table(ds, fragments[:-1], [0] + [s + 1 for s in starts[1:]])  # one frame's item lost
    with pytest.raises(IngestError, match="NumberOfFrames; re-export") as err:
        decode_bytes(short, "short.dcm", IngestOptions(salt=SALT, max_side=4096, max_frames=10))
    assert err.value.reason == "corrupt"
