"""On-disk formats of the data layer: image pools and sample datasets, written and read back losslessly.

An image pool is a directory:

    images/<image_id>.png   RGB uint8 PNGs, de-identified, no text chunks
    pool.jsonl              one MedImage record per line, sorted by image_id, paths relative to the pool
    report.json             how it was made: counts, skipped files with reasons (file keys, never paths)
    CARD.md, contact_sheet.png   for people (the seed pool and `medgr2 data ingest` write them)

A sample dataset is a JSONL file of `Sample` records (enums by value, provenance nested explicitly);
`write_dataset` also copies the images the samples use so the dataset directory stands alone.
Errors name the file, the line and the field. Pure numpy/PIL; no Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medgr2_ray.types import MedImage, Modality, PromptStrategy, Provenance, Sample, TaskType

POOL_FILE = "pool.jsonl"
REPORT_FILE = "report.json"
IMAGES_DIR = "images"


class DataFormatError(ValueError):
    """A record or file that cannot be read; the message names file, line and field."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RecordError:
    """One bad record that was skipped instead of stopping the run (counted and reported)."""

    file: str
    line: int  # 1-based line (JSONL) or record index (JSON array, CSV row)
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: field '{self.field}': {self.message}"


# ---------------------------------------------------------------------------------------------- images


def image_id_for(rgb: np.ndarray) -> str:
    """A content id: identical pixels give the same id, so duplicates are found, not stored twice."""
    digest = hashlib.sha256(str(rgb.shape).encode() + np.ascontiguousarray(rgb).tobytes()).hexdigest()
    return "img-" + digest[:16]


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Save an HxWx3 uint8 array as a PNG without metadata chunks (deterministic bytes)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png: expected HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    Image.fromarray(rgb, mode="RGB").save(path, format="PNG", compress_level=6)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def medimage_to_dict(image: MedImage) -> dict[str, Any]:
    """JSON-ready dict of a MedImage (modality by value)."""
    out = asdict(image)
    out["modality"] = image.modality.value
    return out


def _require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record:
        raise DataFormatError(f"{where}: field '{key}' is missing", key)
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataFormatError(f"{where}: field '{key}' must be {kind}, got {type(value).__name__}", key)
    return value


def medimage_from_dict(record: dict[str, Any], where: str = "<record>") -> MedImage:
    """Parse a MedImage record; `where` (file:line) is put into error messages."""
    modality = _enum(Modality, _require(record, "modality", str, where), where, "modality")
    extra = record.get("extra", {}) or {}
    if not isinstance(extra, dict):
        raise DataFormatError(f"{where}: field 'extra' must be an object")
    return MedImage(
        image_id=_require(record, "image_id", str, where), path=_require(record, "path", str, where),
        modality=modality, anatomy=_require(record, "anatomy", str, where),
        source=_require(record, "source", str, where), licence=_require(record, "licence", str, where),
        study_id=_require(record, "study_id", str, where), width=_require(record, "width", int, where),
        height=_require(record, "height", int, where), extra={str(k): str(v) for k, v in extra.items()},
    )


@dataclass(frozen=True)
class ImagePool:
    """A loaded image pool: its records (paths made absolute) and its build report."""

    root: Path
    images: tuple[MedImage, ...]
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, image_id: str) -> MedImage:
        """The record with this id (KeyError naming the pool when absent)."""
        for image in self.images:
            if image.image_id == image_id:
                return image
        raise KeyError(f"image '{image_id}' is not in the pool at {self.root}")

    def read_rgb(self, image: MedImage | str) -> np.ndarray:
        """Pixels of a record (or an image id) as HxWx3 uint8."""
        record = self.get(image) if isinstance(image, str) else image
        path = Path(record.path)
        return read_rgb(path if path.is_absolute() else self.root / path)

    def counts_by_modality(self) -> dict[str, int]:
        """Number of images per modality value, sorted by name."""
        return dict(sorted(Counter(i.modality.value for i in self.images).items()))

    def studies(self) -> set[str]:
        """Distinct study ids."""
        return {i.study_id for i in self.images}


def load_pool(pool_dir: str | Path, *, check_files: bool = True) -> ImagePool:
    """Load a pool directory written by `PoolWriter` (`medgr2 data ingest` / `seed-pool`).

    Image paths come back absolute. With `check_files`, a record whose PNG is missing is an error that
    names the record; a broken pool is never used half-read.
    """
    root = Path(pool_dir).expanduser().resolve()
    pool_file = root / POOL_FILE
    if not pool_file.is_file():
        raise DataFormatError(f"{root} is not an image pool: {POOL_FILE} is missing "
                              f"(build one with `medgr2 data seed-pool` or `medgr2 data ingest`)")
    images: list[MedImage] = []
    for lineno, line in enumerate(pool_file.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{pool_file}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{where}: not valid JSON ({exc.msg})") from None
        image = medimage_from_dict(record, where)
        path = root / image.path
        if check_files and not path.is_file():
            raise DataFormatError(f"{where}: image file {path} is missing; rebuild or re-ingest the pool")
        images.append(replace(image, path=str(path)))
    report_file = root / REPORT_FILE
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    return ImagePool(root=root, images=tuple(images), report=report)


class PoolWriter:
    """Writes PNGs and records into a pool directory; duplicates (same pixels) are counted, not stored."""

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False) -> None:
        self.root = Path(out_dir).expanduser()
        if (self.root / POOL_FILE).exists():
            if not overwrite:
                raise FileExistsError(f"{self.root} already holds a pool; choose another --out or overwrite")
            shutil.rmtree(self.root / IMAGES_DIR, ignore_errors=True)
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self.records: dict[str, MedImage] = {}
        self.duplicates = 0

    def add(self, rgb: np.ndarray, *, modality: Modality, anatomy: str, source: str, licence: str,
            study_id: str, extra: dict[str, str] | None = None) -> MedImage | None:
        """Store one image; None (and `duplicates` + 1) when identical pixels are already stored."""
        image_id = image_id_for(rgb)
        if image_id in self.records:
            self.duplicates += 1
            return None
        rel = f"{IMAGES_DIR}/{image_id}.png"
        write_png(rgb, self.root / rel)
        record = MedImage(image_id=image_id, path=rel, modality=modality, anatomy=anatomy, source=source,
                          licence=licence, study_id=study_id, width=int(rgb.shape[1]),
                          height=int(rgb.shape[0]), extra=dict(extra or {}))
        self.records[image_id] = record
        return record

    def close(self, report: dict[str, Any]) -> Path:
        """Write pool.jsonl (sorted, so the bytes do not depend on arrival order) and report.json."""
        lines = [json.dumps(medimage_to_dict(r), sort_keys=True) for _, r in sorted(self.records.items())]
        _atomic_write(self.root / POOL_FILE, "".join(line + "\n" for line in lines))
        full = {**report, "images": len(self.records), "duplicates_skipped": self.duplicates}
        _atomic_write(self.root / REPORT_FILE, json.dumps(full, indent=2, sort_keys=True) + "\n")
        return self.root


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- samples


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    """JSON-ready dict of a Sample: enums by value, provenance nested, options as a list."""
    prov = sample.provenance
    if prov.reward is not None and not math.isfinite(prov.reward):
        raise ValueError(f"sample {sample.sample_id}: reward {prov.reward} is not finite")
    return {
        "sample_id": sample.sample_id, "image_id": sample.image_id, "image_path": sample.image_path,
        "question": sample.question, "options": list(sample.options), "answer": sample.answer,
        "task_type": sample.task_type.value, "modality": sample.modality.value,
        "rationale": sample.rationale, "dataset": sample.dataset,
        "provenance": {
            "producer": prov.producer, "model_version": prov.model_version, "round": prov.round,
            "prompt_strategy": prov.prompt_strategy.value if prov.prompt_strategy else None,
            "reward": prov.reward, "selected": prov.selected, "parent_id": prov.parent_id,
            "rm_version": prov.rm_version, "reason": prov.reason,
        },
    }


def _enum(kind: type, value: Any, where: str, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise DataFormatError(f"{where}: field '{name}': {value!r} is not one of "
                              f"{[m.value for m in kind]}", name) from None


def _provenance_from_dict(raw: Any, where: str) -> Provenance:
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: field 'provenance' must be an object")
    strategy = raw.get("prompt_strategy")
    reward = raw.get("reward")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        raise DataFormatError(f"{where}: field 'provenance.reward' must be a number or null")
    return Provenance(
        producer=_require(raw, "producer", str, where), model_version=int(raw.get("model_version", -1)),
        round=int(raw.get("round", 0)),
        prompt_strategy=None if strategy is None else _enum(PromptStrategy, strategy, where,
                                                            "provenance.prompt_strategy"),
        reward=None if reward is None else float(reward), selected=raw.get("selected"),
        parent_id=raw.get("parent_id"), rm_version=int(raw.get("rm_version", -1)), reason=raw.get("reason"),
    )


def sample_from_dict(record: dict[str, Any], where: str = "<record>") -> Sample:
    """Parse a Sample record written by `sample_to_dict`; errors name `where` and the field."""
    options = _require(record, "options", list, where)
    if not all(isinstance(o, str) for o in options):
        raise DataFormatError(f"{where}: field 'options' must be a list of strings")
    return Sample(
        sample_id=_require(record, "sample_id", str, where), image_id=_require(record, "image_id", str, where),
        image_path=_require(record, "image_path", str, where), question=_require(record, "question", str, where),
        options=tuple(options), answer=_require(record, "answer", str, where),
        task_type=_enum(TaskType, _require(record, "task_type", str, where), where, "task_type"),
        modality=_enum(Modality, _require(record, "modality", str, where), where, "modality"),
        rationale=record.get("rationale", "") or "", dataset=record.get("dataset", "") or "",
        provenance=_provenance_from_dict(record.get("provenance", {"producer": "unknown"}), where),
    )


def write_samples(path: str | Path, samples: list[Sample] | tuple[Sample, ...]) -> Path:
    """Write samples as JSONL (atomically). `read_samples` gives back equal objects."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(sample_to_dict(s), ensure_ascii=False, allow_nan=False) for s in samples]
    _atomic_write(out, "".join(line + "\n" for line in lines))
    return out


def read_samples(path: str | Path, errors: list[RecordError] | None = None) -> list[Sample]:
    """Read a samples JSONL file.

    With `errors=None` the first bad line raises a DataFormatError naming file, line and field; with a
    list, bad lines are appended to it as RecordErrors and reading goes on (nothing is dropped silently).
    """
    src = Path(path)
    if not src.is_file():
        raise DataFormatError(f"samples file {src} does not exist")
    samples: list[Sample] = []
    # split on "\n" only: splitlines() also breaks on U+0085/U+2028, which JSON leaves unescaped
    for lineno, line in enumerate(src.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{src}:{lineno}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: a sample must be a JSON object")
            samples.append(sample_from_dict(record, where))
        except (json.JSONDecodeError, DataFormatError) as exc:
            if errors is None:
                raise DataFormatError(str(exc) if isinstance(exc, DataFormatError)
                                      else f"{where}: not valid JSON ({exc.msg})") from None
            errors.append(RecordError(str(src), lineno, getattr(exc, "field", "") or "record", str(exc)))
    return samples


def write_dataset(out_dir: str | Path, samples: list[Sample] | tuple[Sample, ...]) -> Path:
    """A self-contained dataset directory: `samples.jsonl` plus copies of the images it uses.

    Image paths in the written file are relative to `out_dir`; `read_dataset` makes them absolute.
    """
    root = Path(out_dir)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rewritten: list[Sample] = []
    for sample in samples:
        src = Path(sample.image_path)
        if not src.is_file():
            raise DataFormatError(f"sample {sample.sample_id}: image file {src} does not exist")
        rel = f"{IMAGES_DIR}/{sample.image_id}{src.suffix or '.png'}"
        if not (root / rel).exists():
            shutil.copyfile(src, root / rel)
        rewritten.append(replace(sample, image_path=rel))
    write_samples(root / "samples.jsonl", rewritten)
    return root


def read_dataset(dataset_dir: str | Path) -> list[Sample]:
    """Read a directory written by `write_dataset`, with absolute image paths."""
    root = Path(dataset_dir).resolve()
    out = []
    for sample in read_samples(root / "samples.jsonl"):
        path = Path(sample.image_path)
        out.append(replace(sample, image_path=str(path if path.is_absolute() else root / path)))
    return out
