"""Format decoders of the ingestion path: DICOM, NIfTI and raster bytes -> 8-bit RGB frames.

Each `decode_*` takes a file's bytes and `IngestOptions` and returns `DecodedImage`s or raises
`IngestError(reason, message)`; `ingest.py` drives them. Sizes are checked from headers *before*
pixels are decoded, so a small file that claims huge dimensions (a decompression bomb) is refused
without allocating. Windowing to 8 bits is here too: the file's VOI window when it has one, a
per-modality default otherwise. Pure numpy/pydicom/nibabel/Pillow; no Ray.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medgr2_ray.data.vocab import anatomy_from_dicom, modality_from_dicom
from medgr2_ray.types import Modality

REASONS = ("empty", "unreadable", "not_an_image", "dicomdir", "no_pixel_data", "missing_decoder",
           "truncated", "corrupt", "too_large", "too_small", "constant", "nonfinite", "unsupported")


class IngestError(Exception):
    """A file that cannot be ingested; `reason` is one of REASONS, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # exceptions pickle their `args`; ours has two constructor arguments (Ray ships these back)
        return (IngestError, (self.reason, self.message))


@dataclass(frozen=True)
class IngestOptions:
    """How files are turned into pool images."""

    salt: bytes
    """Secret salt for hashed UIDs, study ids and file keys (see `load_or_create_salt`)."""
    max_pixels: int = 50_000_000
    """Refuse files whose decoded pixels (all frames/slices) would exceed this (decompression bombs)."""
    max_file_bytes: int = 2 << 30
    """Refuse larger files (and gzip members that inflate beyond it)."""
    max_side: int = 1024
    """Stored images are downscaled so that their longer side is at most this."""
    min_side: int = 16
    """Images with a shorter side below this are skipped (too small to show anything)."""
    max_frames: int = 32
    """Multi-frame files: at most this many frames, evenly spaced."""
    nifti_slices: int = 3
    """NIfTI volumes: slices per axis, evenly spaced around the centre."""
    modality: Modality | None = None
    """Modality for files that do not say (PNG, NIfTI, DICOM secondary capture); None -> Other."""
    anatomy: str | None = None
    """Anatomy for files that do not say; None -> 'unknown'."""
    licence: str = "user-provided"
    """Licence recorded on every ingested image."""


@dataclass(frozen=True)
class DecodedImage:
    """One image ready for the pool (pixels RGB uint8) with its de-identified metadata."""

    rgb: np.ndarray
    modality: Modality
    anatomy: str
    study_key: str  # already salted/hashed; equal for slices of one study
    extra: dict[str, str] = field(default_factory=dict)


# Transfer syntax UID prefix -> the pip packages whose pydicom plugin decodes it.
_DECODER_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls  (or: pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "pyjpegls  (or: pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear window [low, high] -> 0..255 (clipped)."""
    if not high > low:
        raise ValueError(f"window_to_uint8: high ({high}) must exceed low ({low})")
    scaled = (values.astype(np.float64) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """Robust window: the 0.5th..99.5th percentiles (min..max when those coincide)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise IngestError("nonfinite", "every pixel is NaN or infinite")
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if not high > low:
        low, high = float(finite.min()), float(finite.max())
    if not high > low:
        raise IngestError("constant", f"every pixel has the same value ({low:g}); nothing to see")
    return low, high


def ct_default_window(anatomy: str) -> tuple[float, float]:
    """Default CT windows in HU (as low, high): brain 40/80, lung -600/1500, soft tissue 40/400."""
    if anatomy in ("head", "brain", "skull"):
        center, width = 40.0, 80.0
    elif anatomy in ("chest", "lung"):
        center, width = -600.0, 1500.0
    else:
        center, width = 40.0, 400.0
    return center - width / 2, center + width / 2


def fill_nonfinite(values: np.ndarray, extra: dict[str, str]) -> np.ndarray:
    """Replace NaN/inf by the finite minimum (counted in `extra`); all non-finite is an error."""
    values = values.astype(np.float64, copy=False)
    bad = ~np.isfinite(values)
    if bad.all():
        raise IngestError("nonfinite", "every pixel is NaN or infinite")
    if bad.any():
        values = np.where(bad, values[~bad].min(), values)
        extra["nonfinite_pixels"] = str(int(bad.sum()))
    return values


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """HxW uint8 -> HxWx3 uint8."""
    return np.repeat(gray[:, :, None], 3, axis=2)


def finish(rgb: np.ndarray, options: IngestOptions) -> np.ndarray:
    """Reject constant images and downscale so the longer side is at most `max_side`."""
    if int(rgb.max()) == int(rgb.min()):
        raise IngestError("constant", "the image is a single flat colour after windowing")
    h, w = rgb.shape[:2]
    if max(h, w) > options.max_side:
        scale = options.max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def frame_indices(n_frames: int, max_frames: int) -> list[int]:
    """All frames, or `max_frames` evenly spaced ones (first and last included)."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, max_frames)})


def _check_dims(height: int, width: int, count: int, options: IngestOptions) -> None:
    """Refuse bombs and slivers from header dimensions, before any pixel is decoded."""
    if height <= 0 or width <= 0:
        raise IngestError("corrupt", f"header gives dimensions {width}x{height}")
    total = height * width * max(count, 1)
    if total > options.max_pixels:
        raise IngestError("too_large", f"{width}x{height} x {count} frame(s) = {total} pixels > max_pixels="
                                       f"{options.max_pixels} (raise data.max_pixels if this is genuine)")
    if min(height, width) < options.min_side:
        raise IngestError("too_small", f"{width}x{height} is below min_side={options.min_side}")


# ------------------------------------------------------------------------------------------------ DICOM


def _read_dicom(data: bytes) -> Dataset:
    """Parse a DICOM file (pixels not yet decoded); refuse DICOMDIRs and pixel-less objects."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every odd VR; the outcome is what counts
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise IngestError("corrupt", f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    meta = getattr(ds, "file_meta", None)
    if (meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS) \
            or "DirectoryRecordSequence" in ds:
        raise IngestError("dicomdir", "a DICOMDIR index; its images are ingested from their own files")
    if not any(tag.group == 0x0008 for tag in ds.keys()) and "PixelData" not in ds:
        raise IngestError("corrupt", "no DICOM elements could be read")
    if "PixelData" not in ds:
        kind = ds.get("Modality", "") or "unknown modality"
        raise IngestError("no_pixel_data", f"DICOM object without pixel data ({kind}, e.g. a report, "
                                           "plan or structure set)")
    return ds


class _OffsetTableError(Exception):
    """pydicom found no item where the offset table pointed: the table or the items are wrong."""


def repair_offset_table(ds: Dataset) -> bool:
    """Rebuild a Basic Offset Table that disagrees with its items, when the items make the right one
    unambiguous (exactly one fragment per frame). Seen in the wild: GDCM's XA test file 00191113.dcm
    (4 JPEG frames) lists 5 offsets, each one byte past its item, so pydicom seeks into the middle of an
    item for every frame after the first; GDCM ignores the table. Returns True when `ds.PixelData` was
    rewritten (with a table computed from the items), False when the items cannot say which is which."""
    from pydicom.encaps import encapsulate, generate_fragments

    if "PixelData" not in ds or not ds["PixelData"].is_undefined_length:
        return False
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        fragments = list(generate_fragments(ds.PixelData))[1:]  # item 0 is the offset table
    except ValueError:
        return False
    if n_frames < 2 or len(fragments) != n_frames:
        return False
    ds.PixelData = encapsulate(fragments, has_bot=True)
    return True


def _decode_frame(ds: Dataset, index: int | None) -> np.ndarray:
    """One frame's stored values. A frame that the offset table misplaces is retried once with a table
    rebuilt from the items (`repair_offset_table`); other failures get reasons a person can act on."""
    try:
        return _pixel_array(ds, index)
    except (StopIteration, _OffsetTableError):
        if repair_offset_table(ds):
            return _pixel_array(ds, index)
        raise IngestError("corrupt", "the encapsulated pixel data does not match its offset table or "
                                     "NumberOfFrames; re-export the file (e.g. gdcmconv --raw)") from None


def _pixel_array(ds: Dataset, index: int | None) -> np.ndarray:
    """`pydicom.pixels.pixel_array`, with decoder failures mapped to reasons a person can act on."""
    from pydicom.pixels import pixel_array

    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc)
        if "missing dependencies" in text or "does not support" in text or "No plugins" in text:
            hint = _DECODER_HINTS.get(ts, "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
            raise IngestError("missing_decoder", f"no installed decoder for transfer syntax {ts}; "
                                                 f"install one with: pip install {hint}") from None
        if "exceeds limit" in text:
            raise IngestError("too_large", "the compressed frame decodes to more pixels than allowed") from None
        raise IngestError("corrupt", f"pixel data cannot be decoded ({text.splitlines()[0][:160]})") from None
    except ValueError as exc:
        if "when parsing the encapsulated pixel data" in str(exc) or "Basic Offset Table" in str(exc):
            raise _OffsetTableError(str(exc)) from None
        if "less than expected" in str(exc):
            raise IngestError("truncated", "pixel data is shorter than the header says") from None
        raise IngestError("corrupt", f"inconsistent pixel attributes ({str(exc)[:160]})") from None
    except AttributeError as exc:
        raise IngestError("corrupt", f"a required pixel attribute is missing ({exc})") from None


def _first_number(value: object) -> float | None:
    """The first value of a (possibly multi-valued) DICOM number, or None when unusable."""
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None  # type: ignore[index, arg-type]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _dicom_window(values: np.ndarray, ds: Dataset, modality: Modality, anatomy: str,
                  extra: dict[str, str]) -> tuple[float, float]:
    """The file's VOI window when valid, else the per-modality default (recorded in `extra`)."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c, w = _first_number(center), _first_number(width)
        if c is not None and w is not None and w > 1:
            extra["window"] = f"file:{c:g}/{w:g}"
            return c - w / 2, c + w / 2
    if modality == Modality.CT and "RescaleIntercept" in ds:
        low, high = ct_default_window(anatomy)
        extra["window"] = f"ct-default:{(low + high) / 2:g}/{high - low:g}"
        return low, high
    low, high = auto_window(values)
    extra["window"] = f"percentile:{low:g}..{high:g}"
    return low, high


def _dicom_frame_to_rgb(arr: np.ndarray, ds: Dataset, modality: Modality, anatomy: str,
                        extra: dict[str, str]) -> np.ndarray:
    """Stored values of one frame -> RGB uint8 (palette, colour, or windowed grayscale)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 8
        return (rgb >> 8).astype(np.uint8) if bits > 8 else np.clip(rgb, 0, 255).astype(np.uint8)
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        if arr.dtype == np.uint8:
            return arr
        top = float(2 ** int(ds.get("BitsStored", 16)) - 1)
        return window_to_uint8(arr, 0.0, top)
    values = fill_nonfinite(np.asarray(apply_modality_lut(arr, ds), dtype=np.float64), extra)
    gray = window_to_uint8(values, *_dicom_window(values, ds, modality, anatomy, extra))
    if photometric == "MONOCHROME1":  # low values are bright in MONOCHROME1
        gray = 255 - gray
    return gray_to_rgb(gray)


def decode_dicom(data: bytes, options: IngestOptions) -> list[DecodedImage]:
    """DICOM bytes -> one DecodedImage per (sampled) frame, de-identified before anything is read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every non-conformant value; outcomes count
        return _decode_dicom(data, options)


def _promote_functional_groups(ds: Dataset) -> None:
    """Enhanced (multi-frame) objects keep rescale and window in functional group sequences; copy the
    shared (else first per-frame) values to the top level, where the windowing code looks for them."""
    groups = [g for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
              for g in (ds.get(name) or [])[:1]]
    wanted = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
              "FrameVOILUTSequence": ("WindowCenter", "WindowWidth")}
    for seq_name, keywords in wanted.items():
        for group in groups:
            items = group.get(seq_name) or []
            if items and all(k in items[0] for k in keywords):
                for k in keywords:
                    if k not in ds:
                        setattr(ds, k, items[0][k].value)
                break


def _decode_dicom(data: bytes, options: IngestOptions) -> list[DecodedImage]:
    from medgr2_ray.data.deid import deidentify

    ds = _read_dicom(data)
    deid = deidentify(ds, options.salt)
    _promote_functional_groups(ds)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise IngestError("corrupt", f"NumberOfFrames is not a number ({ds.get('NumberOfFrames')!r})") from None
    # Frames are decoded one at a time, so the cap applies to the frames we decode, not all of them.
    picks = frame_indices(n_frames, options.max_frames)
    _check_dims(rows, cols, len(picks) * int(ds.get("SamplesPerPixel", 1) or 1), options)
    modality = modality_from_dicom(ds.get("Modality")) or options.modality or Modality.OTHER
    anatomy = anatomy_from_dicom(ds.get("BodyPartExamined"))
    if anatomy == "unknown" and options.anatomy:
        anatomy = options.anatomy
    base = {"format": "dicom", "dicom_modality": str(ds.get("Modality", "") or ""),
            "photometric": str(ds.get("PhotometricInterpretation", "")),
            "burned_in_annotation": deid.burned_in_annotation, "frames": str(n_frames)}
    study = str(ds.get("StudyInstanceUID", "") or "")  # already a salted hash after deidentify
    out = []
    for idx in picks:
        extra = {**base, "frame": str(idx)}
        arr = _decode_frame(ds, idx if n_frames > 1 else None)
        rgb = finish(_dicom_frame_to_rgb(arr, ds, modality, anatomy, extra), options)
        out.append(DecodedImage(rgb=rgb, modality=modality, anatomy=anatomy, study_key=study, extra=extra))
    return out


# ----------------------------------------------------------------------------------------------- raster


def _pil_frame_to_rgb(im: Image.Image, extra: dict[str, str]) -> np.ndarray:
    """A loaded Pillow frame -> RGB uint8; 16-bit and float frames are windowed like grayscale scans."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = fill_nonfinite(np.asarray(im, dtype=np.float64), extra)
        low, high = auto_window(values)
        extra["window"] = f"percentile:{low:g}..{high:g}"
        return gray_to_rgb(window_to_uint8(values, low, high))
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_raster(data: bytes, options: IngestOptions) -> list[DecodedImage]:
    """PNG/JPEG/BMP/TIFF/GIF bytes -> DecodedImages (multi-page files give several)."""
    from PIL import UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels rules
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            if data[:4] in (b"II*\x00", b"MM\x00*"):
                raise IngestError("unsupported", "a TIFF variant Pillow cannot read (compression or "
                                                 "layout); convert it to PNG or standard TIFF") from None
            raise IngestError("corrupt", "the header is damaged: Pillow cannot identify the image") from None
        except Image.DecompressionBombError as exc:
            raise IngestError("too_large", str(exc)) from None
        except OSError as exc:
            raise IngestError("corrupt", f"cannot open the image ({exc})") from None
        width, height = im.size
        n_frames = int(getattr(im, "n_frames", 1))
        picks = frame_indices(n_frames, options.max_frames)
        _check_dims(height, width, len(picks), options)
        out = []
        for idx in picks:
            extra = {"format": str(im.format or "").lower(), "frame": str(idx), "frames": str(n_frames)}
            try:
                im.seek(idx)
                im.load()
            except Image.DecompressionBombError as exc:
                raise IngestError("too_large", str(exc)) from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
                raise IngestError(reason, f"pixel data cannot be decoded ({exc})") from None
            rgb = finish(_pil_frame_to_rgb(im, extra), options)
            out.append(DecodedImage(rgb=rgb, modality=options.modality or Modality.OTHER,
                                    anatomy=options.anatomy or "unknown", study_key="", extra=extra))
    return out


# ------------------------------------------------------------------------------------------------ NIfTI

_AXIS_NAMES = ("sagittal", "coronal", "axial")  # after reorientation to RAS


def _nifti_volume(data: bytes, options: IngestOptions) -> tuple[np.ndarray, str]:
    """The first 3-D volume of a NIfTI-1/2 file, reoriented to RAS, as float64; size checked first."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    cls = nib.Nifti2Image if data[4:8] in (b"n+2\x00", b"ni2\x00") else nib.Nifti1Image
    try:
        img = cls.from_bytes(data)
    except Exception as exc:
        raise IngestError("corrupt", f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise IngestError("corrupt", f"NIfTI header gives shape {shape}")
    vol_shape = (shape + (1,))[:3] if len(shape) == 2 else shape[:3]
    if int(np.prod(vol_shape)) > options.max_pixels:
        raise IngestError("too_large", f"volume {vol_shape} exceeds max_pixels={options.max_pixels}")
    index = (slice(None),) * min(len(shape), 3) + (0,) * max(len(shape) - 3, 0)
    try:
        vol = np.asarray(img.dataobj[index], dtype=np.float64).reshape(vol_shape)
    except (ValueError, OSError, EOFError) as exc:
        reason = "truncated" if "buffer" in str(exc) or "size" in str(exc) else "corrupt"
        raise IngestError(reason, f"voxel data cannot be read ({exc})") from None
    vol = apply_orientation(vol, io_orientation(img.affine))
    return vol, "x".join(str(s) for s in shape)


def decode_nifti(data: bytes, options: IngestOptions) -> list[DecodedImage]:
    """NIfTI bytes -> slices along each axis (`nifti_slices` per axis), one window for the volume."""
    vol, shape_text = _nifti_volume(data, options)
    base: dict[str, str] = {"format": "nifti", "volume_shape": shape_text}
    vol = fill_nonfinite(vol, base)
    low, high = auto_window(vol)
    base["window"] = f"percentile:{low:g}..{high:g}"
    out = []
    for axis in range(3):
        plane = [s for a, s in enumerate(vol.shape) if a != axis]
        if vol.shape[axis] < 1 or min(plane) < options.min_side:
            continue
        n = vol.shape[axis]
        picks = sorted({int(round(x)) for x in np.linspace(0.3 * (n - 1), 0.7 * (n - 1), options.nifti_slices)})
        for idx in picks:
            # rot90 puts anterior/superior at the top of the picture, as radiologists view slices.
            gray = window_to_uint8(np.rot90(np.take(vol, idx, axis=axis)), low, high)
            extra = {**base, "axis": _AXIS_NAMES[axis], "slice": str(idx)}
            try:
                rgb = finish(gray_to_rgb(np.ascontiguousarray(gray)), options)
            except IngestError:
                continue  # an empty slice (all background) is not an error of the file
            out.append(DecodedImage(rgb=rgb, modality=options.modality or Modality.OTHER,
                                    anatomy=options.anatomy or "unknown", study_key="", extra=extra))
    if not out:
        raise IngestError("too_small", f"no slice of volume {shape_text} is at least min_side="
                                       f"{options.min_side} on both sides and non-empty")
    return out
