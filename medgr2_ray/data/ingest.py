"""Ingestion: DICOM, NIfTI and ordinary raster files -> de-identified RGB uint8 images with metadata.

`decode_bytes(data, name, options)` is the pure core: it sniffs the format from the bytes (not the
file name), decodes, de-identifies (DICOM), windows to 8 bits and returns `DecodedImage`s, or raises
`IngestError(reason, message)`. It works on bytes so that Ray tasks on other machines can run it
(see `data/parallel.py`). `ingest_paths` walks files and folders, writes a pool with `PoolWriter`, and
returns an `IngestReport`: every file is either ingested or skipped with a reason, never dropped.

DICOM: rescale slope/intercept (or a Modality LUT), the file's own VOI window when present, else a
per-modality default (CT soft tissue / brain / lung windows by anatomy; percentiles for the rest),
MONOCHROME1 inverted, palette colour applied, YBR converted to RGB, multi-frame files sampled into
frames. NIfTI: slices along each axis of the first volume. Raster: PNG/JPEG/BMP/TIFF/GIF via Pillow.
File paths can carry patient names, so the pool and its report store salted hashes of them, never
the paths. No Ray here.
"""

from __future__ import annotations

import gzip
import io
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgr2_ray.data import decoders
from medgr2_ray.data.decoders import REASONS, DecodedImage, IngestError, IngestOptions
from medgr2_ray.data.deid import hash_text
from medgr2_ray.data.store import PoolWriter

# Re-exported: callers import the ingestion vocabulary from here, the decoders stay an implementation detail.
__all__ = ["REASONS", "DecodedImage", "IngestError", "IngestOptions", "IngestReport", "SkippedFile",
           "collect_files", "decode_bytes", "decode_guarded", "decode_path", "file_key", "ingest_paths",
           "load_or_create_salt", "record_outcome", "sniff"]


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not ingested, by its salted key (paths may contain PHI) and extension."""

    file_key: str
    suffix: str
    reason: str
    message: str


@dataclass
class IngestReport:
    """What one ingestion did. `skipped_paths` is for the console only and is never written."""

    files_seen: int = 0
    files_ingested: int = 0
    images_written: int = 0
    duplicates: int = 0
    burned_in_flagged: int = 0
    by_modality: Counter = field(default_factory=Counter)
    skipped: list[SkippedFile] = field(default_factory=list)
    skipped_paths: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What goes into report.json (no paths)."""
        return {
            "files_seen": self.files_seen, "files_ingested": self.files_ingested,
            "images_written": self.images_written, "duplicates": self.duplicates,
            "burned_in_annotation_flagged": self.burned_in_flagged,
            "by_modality": dict(sorted(self.by_modality.items())),
            "skipped_by_reason": dict(sorted(Counter(s.reason for s in self.skipped).items())),
            "skipped": [s.__dict__ for s in self.skipped],
        }


def load_or_create_salt(path: str | Path) -> bytes:
    """The installation's de-identification salt: read from `path`, or created (32 random bytes, 0600)."""
    p = Path(path).expanduser()
    if p.is_file():
        salt = p.read_bytes()
        if len(salt) < 16:
            raise ValueError(f"salt file {p} holds {len(salt)} bytes; delete it to make a new 32-byte one")
        return salt
    p.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(salt)
    return salt


def sniff(data: bytes, name: str) -> str:
    """The format of a file from its first bytes: dicom, png, jpeg, bmp, tiff, gif, nifti, gzip, unknown."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    magic = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"BM": "bmp", b"II*\x00": "tiff",
             b"MM\x00*": "tiff", b"GIF8": "gif", b"\x1f\x8b": "gzip"}
    for prefix, kind in magic.items():
        if data.startswith(prefix):
            return kind
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(data) >= 544 and data[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    if name.lower().endswith(".dcm"):
        return "dicom"  # no preamble (old ACR-NEMA style); pydicom decides
    return "unknown"


def decode_bytes(data: bytes, name: str, options: IngestOptions) -> list[DecodedImage]:
    """Decode one file's bytes into pool-ready images, or raise IngestError."""
    if not data:
        raise IngestError("empty", "zero-byte file")
    if len(data) > options.max_file_bytes:
        raise IngestError("too_large", f"{len(data)} bytes > max_file_bytes={options.max_file_bytes}")
    kind = sniff(data, name)
    if kind == "gzip":
        data = _gunzip(data, options.max_file_bytes)
        kind = sniff(data, name[:-3] if name.lower().endswith(".gz") else name)
        if kind not in ("nifti", "dicom"):
            raise IngestError("not_an_image", "gzip file that holds neither NIfTI nor DICOM")
    if kind == "dicom":
        return decoders.decode_dicom(data, options)
    if kind == "nifti":
        return decoders.decode_nifti(data, options)
    if kind in ("png", "jpeg", "bmp", "tiff", "gif"):
        return decoders.decode_raster(data, options)
    raise IngestError("not_an_image", "not a DICOM, NIfTI, PNG, JPEG, BMP, TIFF or GIF file "
                                      "(format is read from the bytes, not the file name)")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate with a size cap: a small .gz can expand to gigabytes (a decompression bomb)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            out = fh.read(limit + 1)
    except (OSError, EOFError) as exc:
        raise IngestError("corrupt", f"gzip stream is damaged ({exc})") from None
    if len(out) > limit:
        raise IngestError("too_large", f"gzip member inflates beyond max_file_bytes={limit}")
    return out


def collect_files(paths: list[str | Path]) -> list[Path]:
    """Files under `paths` (folders recursively, hidden entries included so they are reported), sorted."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found.extend(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; check the path")
    return sorted(set(found))


def file_key(path: Path, salt: bytes) -> str:
    """Salted key of a file path: identifies a file in reports without revealing its name."""
    return "f-" + hash_text(str(path.resolve()), salt)


def record_outcome(report: IngestReport, writer: PoolWriter, path: Path, options: IngestOptions,
                   outcome: list[DecodedImage] | IngestError) -> None:
    """Add one file's decoded images (or its error) to the pool and the report."""
    report.files_seen += 1
    key = file_key(path, options.salt)
    if isinstance(outcome, IngestError):
        report.skipped.append(SkippedFile(key, path.suffix.lower(), outcome.reason, outcome.message))
        report.skipped_paths.append(f"{path}: {outcome.reason}: {outcome.message}")
        return
    report.files_ingested += 1
    if any(d.extra.get("burned_in_annotation") == "YES" for d in outcome):
        report.burned_in_flagged += 1
    for decoded in outcome:
        stored = writer.add(decoded.rgb, modality=decoded.modality, anatomy=decoded.anatomy,
                            source=f"file:{key}", licence=options.licence,
                            study_id="st-" + hash_text(decoded.study_key or key, options.salt),
                            extra={**decoded.extra, "file_key": key})
        if stored is None:
            report.duplicates += 1
        else:
            report.images_written += 1
            report.by_modality[decoded.modality.value] += 1


def decode_path(path: Path, options: IngestOptions) -> list[DecodedImage] | IngestError:
    """Read and decode one file; every failure becomes an IngestError (one file never stops a batch)."""
    try:
        if path.stat().st_size > options.max_file_bytes:
            return IngestError("too_large", f"file larger than max_file_bytes={options.max_file_bytes}")
        data = path.read_bytes()
    except OSError as exc:
        return IngestError("unreadable", f"cannot read the file ({exc.strerror})")
    return decode_guarded(data, path.name, options)


def decode_guarded(data: bytes, name: str, options: IngestOptions) -> list[DecodedImage] | IngestError:
    """`decode_bytes`, with any unexpected exception turned into a 'corrupt' IngestError."""
    try:
        return decode_bytes(data, name, options)
    except IngestError as exc:
        return exc
    except MemoryError:
        return IngestError("too_large", "ran out of memory decoding; lower max_pixels")
    except Exception as exc:  # a decoder bug on hostile input must not kill the batch
        return IngestError("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}")


def ingest_paths(paths: list[str | Path], out_dir: str | Path, options: IngestOptions, *,
                 overwrite: bool = False, card: str | None = None) -> IngestReport:
    """Ingest files/folders into a new pool at `out_dir` (sequentially; see parallel.py for Ray)."""
    files = collect_files(paths)
    writer = PoolWriter(out_dir, overwrite=overwrite)
    report = IngestReport()
    for path in files:
        record_outcome(report, writer, path, options, decode_path(path, options))
    finish_pool(writer, report, card)
    return report


def finish_pool(writer: PoolWriter, report: IngestReport, card: str | None) -> None:
    """Write pool.jsonl, report.json and (optionally) CARD.md."""
    writer.close(report.to_dict())
    if card is not None:
        (writer.root / "CARD.md").write_text(card)
