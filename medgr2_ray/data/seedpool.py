"""The bundled seed pool: real medical images that our Python dependencies ship, built offline.

Sources: pydicom's and pydicom-data's DICOM test files (CT, MR, computed radiography, ultrasound,
nuclear medicine; the JPEG-lossless ones decode with pylibjpeg), scikit-image's sample images (fundus
photographs, immunohistochemistry, quantitative phase microscopy), nibabel's test volumes (brain MR,
NIfTI), matplotlib's sample MR slice, and, when `medgr2 data fetch-debian` (run by scripts/setup.sh)
has put them in the cache, three Debian packages' files (InVesalius' head CT, MRIcron's Colin27 brain
MR, GDCM's neck X-ray angiogram; see data/debian.py). A missing optional source is left out and the card says so. Every DICOM goes
through the same de-identifying ingestion as user data. Larger images contribute square crops and multi-frame files
several frames, to reach a few hundred images from a few dozen studies; crops and frames keep their
study id, so `split_by_study` never puts two views of one study on both sides.

`ensure_seed_pool(cache_dir)` builds it once (into a temporary directory renamed into place, so
concurrent callers never see half a pool) and reuses it. The build is deterministic: same inputs,
same bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgr2_ray.data.debian import debian_file
from medgr2_ray.data.ingest import IngestError, IngestOptions, decode_bytes
from medgr2_ray.data.deid import hash_text
from medgr2_ray.data.store import POOL_FILE, ImagePool, PoolWriter, load_pool
from medgr2_ray.types import Modality

SEED_POOL_VERSION = "v3"  # v3: + the GDCM X-ray angiogram (a third X-ray study)
# The seed pool is built from public test files; a fixed salt keeps its ids reproducible everywhere.
# v2's salt on purpose: study ids and crop boxes of every source that v2 had stay the same in v3, and
# the split is stratified by modality (X-ray sorts last), so v3 changes the X-ray studies only.
_SEED_SALT = b"medgr2-seed-pool-v2"

_PYDICOM_LICENCE = "pydicom test data (pydicom, MIT); originals from NEMA WG04/GDCM/public samples"
_PYDICOM_DATA_LICENCE = "pydicom-data (MIT); see the package for each file's origin"
_CQ500_LICENCE = "pydicom-data (MIT); slice from the CQ500 head-CT collection (CC BY-NC-SA 4.0)"
_SKIMAGE_CC0 = "scikit-image sample data, CC0 1.0"
_NIBABEL_LICENCE = "nibabel test data (nibabel, MIT)"
_MPL_LICENCE = "matplotlib sample data (matplotlib licence, PSF-based)"
_MRICRON_LICENCE = "Debian mricron-data: Colin27 'ch2' template (BSD-3-Clause, Chris Rorden)"
_INVESALIUS_LICENCE = "Debian invesalius-examples: ProMED CT 0051 head CT (GPL-2, CTI Renato Archer)"
_GDCM_LICENCE = "Debian libgdcm3.0: GDCM example 00191113.dcm, neck X-ray angiogram (Apache-2.0, M. Malaterre)"


@dataclass(frozen=True)
class SeedSource:
    """One file of the seed pool and what we know about it (the DICOM header may not say)."""

    package: str  # "pydicom" | "skimage" | "nibabel" | "matplotlib" | "debian" (optional: may be absent)
    filename: str
    modality: Modality
    anatomy: str
    licence: str
    crops: int = 0  # extra square crops taken from the first image of the file
    max_frames: int = 4
    max_side: int = 512  # stored size; the 1024x256 whole-body scan keeps its full height
    nifti_slices: int = 4  # volumes: slices per axis


SOURCES: tuple[SeedSource, ...] = (
    SeedSource("pydicom", "CT_small.dcm", Modality.CT, "abdomen", _PYDICOM_LICENCE, crops=3),
    SeedSource("pydicom", "693_UNCR.dcm", Modality.CT, "head", _CQ500_LICENCE, crops=8),
    SeedSource("pydicom", "eCT_Supplemental.dcm", Modality.CT, "head", _PYDICOM_LICENCE, crops=2),
    SeedSource("pydicom", "J2K_pixelrep_mismatch.dcm", Modality.CT, "head", _PYDICOM_LICENCE, crops=6),
    SeedSource("pydicom", "explicit_VR-UN.dcm", Modality.CT, "abdomen", _PYDICOM_LICENCE, crops=8),
    SeedSource("pydicom", "bad_sequence.dcm", Modality.CT, "neck", _PYDICOM_LICENCE, crops=8),
    SeedSource("debian", "usr/share/doc/invesalius-examples/examples/Cranium.inv3", Modality.CT, "head",
               _INVESALIUS_LICENCE, nifti_slices=5),
    SeedSource("pydicom", "MR_small.dcm", Modality.MR, "head", _PYDICOM_LICENCE, crops=2),
    SeedSource("pydicom", "MR2_UNCR.dcm", Modality.MR, "shoulder", _PYDICOM_DATA_LICENCE, crops=10),
    SeedSource("pydicom", "emri_small.dcm", Modality.MR, "head", _PYDICOM_DATA_LICENCE, max_frames=10),
    SeedSource("pydicom", "MR-SIEMENS-DICOM-WithOverlays.dcm", Modality.MR, "abdomen",
               _PYDICOM_DATA_LICENCE, crops=8),
    SeedSource("nibabel", "anatomical.nii", Modality.MR, "brain", _NIBABEL_LICENCE),
    SeedSource("nibabel", "example4d.nii.gz", Modality.MR, "brain", _NIBABEL_LICENCE),
    SeedSource("matplotlib", "s1045.ima.gz", Modality.MR, "head", _MPL_LICENCE, crops=6),
    SeedSource("debian", "usr/share/mricron/templates/ch2.nii.gz", Modality.MR, "brain", _MRICRON_LICENCE),
    SeedSource("pydicom", "RG1_UNCR.dcm", Modality.XRAY, "chest", _PYDICOM_DATA_LICENCE, crops=14),
    SeedSource("pydicom", "RG3_UNCR.dcm", Modality.XRAY, "leg", _PYDICOM_DATA_LICENCE, crops=14),
    SeedSource("debian", "usr/share/doc/libgdcm3.0/examples/00191113.dcm", Modality.XRAY, "neck", _GDCM_LICENCE,
               crops=10),
    SeedSource("pydicom", "US1_UNCR.dcm", Modality.ULTRASOUND, "unknown", _PYDICOM_DATA_LICENCE, crops=4),
    SeedSource("pydicom", "OBXXXX1A_2frame.dcm", Modality.ULTRASOUND, "fetus", _PYDICOM_DATA_LICENCE, crops=4),
    SeedSource("pydicom", "gdcm-US-ALOKA-16.dcm", Modality.ULTRASOUND, "unknown", _PYDICOM_DATA_LICENCE,
               crops=3),
    SeedSource("pydicom", "color3d_jpeg_baseline.dcm", Modality.ULTRASOUND, "heart",
               _PYDICOM_DATA_LICENCE, max_frames=16),
    SeedSource("pydicom", "color-pl.dcm", Modality.ULTRASOUND, "heart", _PYDICOM_DATA_LICENCE),
    SeedSource("pydicom", "JPGLosslessP14SV1_1s_1f_8b.dcm", Modality.ULTRASOUND, "heart", _PYDICOM_DATA_LICENCE,
               crops=6),
    SeedSource("pydicom", "JPEG2000_UNC.dcm", Modality.NUCLEAR, "whole body", _PYDICOM_DATA_LICENCE, crops=10,
               max_side=1024),
    SeedSource("skimage", "retina.jpg", Modality.FUNDUS, "retina", _SKIMAGE_CC0, crops=18),
    SeedSource("skimage", "microaneurysms.png", Modality.FUNDUS, "retina",
               "scikit-image sample data; CC0 (HRF fundus database)"),
    SeedSource("skimage", "ihc.png", Modality.HISTOPATHOLOGY, "colon",
               "scikit-image sample data; no known copyright restrictions (CMMI)", crops=18),
    SeedSource("skimage", "cell.png", Modality.MICROSCOPY, "cell", _SKIMAGE_CC0, crops=14),
)


def locate(source: SeedSource) -> Path:
    """The installed file of a pip-package source (FileNotFoundError naming the package to install)."""
    if source.package == "pydicom":
        from pydicom.data import get_testdata_file

        found = get_testdata_file(source.filename)
        path = Path(found) if found else None
    elif source.package == "skimage":
        import skimage.data

        path = Path(skimage.data.data_dir) / source.filename
    elif source.package == "matplotlib":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / source.filename
    else:
        import nibabel

        path = Path(nibabel.__file__).parent / "tests" / "data" / source.filename
    if path is None or not path.is_file():
        raise FileNotFoundError(f"seed pool: {source.filename} not found; reinstall {source.package}"
                                f"{' and pydicom-data' if source.package == 'pydicom' else ''}")
    return path


def _nifti_bytes(volume: np.ndarray, zooms: tuple[float, float, float]) -> bytes:
    """A volume (x, y, z) as NIfTI bytes, so formats without a decoder of their own take the NIfTI path."""
    import nibabel

    image = nibabel.Nifti1Image(np.ascontiguousarray(volume), np.diag([*zooms, 1.0]))
    return image.to_bytes()


def _inv3_volume(path: Path) -> bytes:
    """An InVesalius project (a tar.gz of plists and a raw int16 matrix) as NIfTI bytes. Read in memory
    by member name: nothing is extracted to disk, so a hostile archive cannot write anywhere."""
    import plistlib
    import tarfile

    with tarfile.open(path, "r:gz") as tar:
        members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        main = plistlib.loads(tar.extractfile(members["main.plist"]).read())  # type: ignore[union-attr]
        matrix = main["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()  # type: ignore[union-attr]
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])  # (z, y, x)
    sx, sy, sz = (float(v) for v in main["spacing"])
    return _nifti_bytes(volume.transpose(2, 1, 0)[:, ::-1, :], (sx, sy, sz))


def _raw_slice(path: Path, side: int = 256) -> bytes:
    """matplotlib's `s1045.ima.gz`: one raw little-endian uint16 MR slice, side x side."""
    import gzip

    gray = np.frombuffer(gzip.decompress(path.read_bytes()), dtype="<u2").reshape(side, side)
    # NIfTI slices are rotated by 90 degrees for display; pre-rotate so the head stays upright
    return _nifti_bytes(np.rot90(gray, -1)[:, :, None].astype(np.uint16), (1.0, 1.0, 1.0))


def source_bytes(source: SeedSource, cache_dir: str | Path | None) -> tuple[bytes, str] | None:
    """(bytes, name the ingestion sniffs) of a source; None when an optional (Debian) one is absent."""
    if source.package == "debian":
        path = debian_file(cache_dir, source.filename)
        if path is None:
            return None
        if path.suffix == ".inv3":
            return _inv3_volume(path), path.stem + ".nii"
        return path.read_bytes(), path.name
    path = locate(source)
    if path.name.endswith(".ima.gz"):
        return _raw_slice(path), path.name.removesuffix(".ima.gz") + ".nii"
    return path.read_bytes(), path.name


def missing_sources(cache_dir: str | Path | None) -> list[SeedSource]:
    """The optional sources this machine lacks (`medgr2 data fetch-debian` fetches them)."""
    return [s for s in SOURCES if s.package == "debian" and debian_file(cache_dir, s.filename) is None]


def crops(rgb: np.ndarray, count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """`count` deterministic crops (35-60 % of each side, the image's aspect ratio) that are not
    mostly background; the box "x,y,w,h" comes with each."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    out: list[tuple[np.ndarray, str]] = []
    for _ in range(count * 6):  # background-heavy images need a few tries per crop
        if len(out) == count:
            break
        scale = rng.uniform(0.35, 0.6)
        ch, cw = int(h * scale), int(w * scale)
        if min(ch, cw) < 32:
            break
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = rgb[y:y + ch, x:x + cw]
        if crop.mean() < 20 or crop.std() < 8:  # mostly black or flat: nothing to ask about
            continue
        out.append((np.ascontiguousarray(crop), f"{x},{y},{cw},{ch}"))
    return out


def _add_source(writer: PoolWriter, source: SeedSource, counts: Counter, cache_dir: str | Path | None) -> None:
    """Decode one source file with the ingestion path and add its frames and crops to the pool."""
    found = source_bytes(source, cache_dir)
    if found is None:
        counts["missing_sources"] += 1
        return
    options = IngestOptions(salt=_SEED_SALT, max_side=source.max_side, min_side=24, max_frames=source.max_frames,
                            nifti_slices=source.nifti_slices, modality=source.modality, anatomy=source.anatomy,
                            licence=source.licence)
    decoded = decode_bytes(found[0], found[1], options)  # errors here are build bugs: raise
    name = source.filename.rsplit("/", 1)[-1]
    label = f"{'pydicom-data' if source.package == 'pydicom' else source.package}:{name}"
    study = "st-" + hash_text(decoded[0].study_key or label, _SEED_SALT)
    views = [(d.rgb, d.extra) for d in decoded]
    seed = int(hash_text(label, _SEED_SALT, 8), 16)
    views += [(crop, {**decoded[0].extra, "crop": box}) for crop, box in crops(decoded[0].rgb,
                                                                                       source.crops, seed)]
    for rgb, extra in views:
        stored = writer.add(rgb, modality=source.modality, anatomy=source.anatomy, source=label,
                            licence=source.licence, study_id=study, extra=extra)
        counts["duplicates" if stored is None else "images"] += 1


def build_seed_pool(out_dir: str | Path, *, overwrite: bool = False, cache_dir: str | Path | None = None) -> Path:
    """Build the seed pool into `out_dir` (pool.jsonl, images/, report.json, CARD.md, contact_sheet.png);
    the optional Debian sources are read from `cache_dir` (or a system install) when present."""
    from medgr2_ray.data.sheet import contact_sheet

    writer = PoolWriter(out_dir, overwrite=overwrite)
    counts: Counter = Counter()
    for source in SOURCES:
        try:
            _add_source(writer, source, counts, cache_dir)
        except IngestError as exc:
            raise RuntimeError(f"seed pool: {source.filename} failed to decode ({exc}); "
                               "is the installed pydicom/scikit-image/nibabel the pinned version?") from exc
    missing = [s.filename for s in missing_sources(cache_dir)]
    writer.close({"kind": "seed-pool", "version": SEED_POOL_VERSION, "sources": len(SOURCES) - len(missing),
                  "missing_optional_sources": missing})
    pool = load_pool(writer.root)
    (writer.root / "CARD.md").write_text(seed_card(pool, missing))
    contact_sheet(pool, writer.root / "contact_sheet.png")
    return writer.root


def ensure_seed_pool(cache_dir: str | Path) -> Path:
    """The seed pool under `cache_dir` (e.g. config `data.cache_dir`), built on first use, then reused.

    Safe under concurrency: each builder writes a private temporary directory and renames it into
    place; a loser of the race discards its copy and uses the winner's.
    """
    cache = Path(cache_dir).expanduser()
    missing = missing_sources(cache)
    # a pool built without the optional sources gets its own name: fetching them later rebuilds it
    suffix = f"-without-{len(missing)}-of-{len(SOURCES)}" if missing else ""
    target = cache / f"seed_pool_{SEED_POOL_VERSION}{suffix}"
    if (target / POOL_FILE).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seed_pool_build_", dir=cache))
    try:
        build_seed_pool(tmp / "pool", cache_dir=cache)
        try:
            os.rename(tmp / "pool", target)
        except OSError:
            if not (target / POOL_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def seed_card(pool: ImagePool, missing: Sequence[str] = ()) -> str:
    """CARD.md of the seed pool: what is in it, where it came from, and what it cannot be used for."""
    by_mod: dict[str, set[str]] = {}
    for image in pool.images:
        by_mod.setdefault(image.modality.value, set()).add(image.study_id)
    counts = pool.counts_by_modality()
    rows = "\n".join(f"| {m} | {counts[m]} | {len(by_mod[m])} |" for m in sorted(counts))
    sources = "\n".join(f"- `{s.filename}` ({s.package}): {s.modality.value}, {s.anatomy}; {s.licence}"
                        f"{' **(missing here: not in this pool)**' if s.filename in missing else ''}"
                        for s in SOURCES)
    absent = (f"\n- **{len(missing)} optional source(s) missing** on the machine that built this pool; run "
              "`medgr2 data fetch-debian` (scripts/setup.sh does) and rebuild.\n" if missing else "")
    return f"""# medgr2_ray seed pool {SEED_POOL_VERSION}

{len(pool)} images from {len(pool.studies())} studies in {len(counts)} modalities, built offline from
files that pydicom, pydicom-data, scikit-image, nibabel, matplotlib and three Debian packages ship.
{absent}
| modality | images | studies |
|---|---|---|
{rows}

## Read this before using it

- **Few patients.** The images come from {len(SOURCES)} files, about {len(pool.studies())} studies and
  fewer distinct people. Crops and frames of one study are not independent samples. Accuracy measured
  on this pool says whether the pipeline works, not whether a model knows medicine.
- Several test files were downsized or edited by the pydicom authors; some ultrasound frames carry
  burned-in annotations (text in the pixels) that de-identification does not remove.
- Anatomy labels were assigned by hand from the file descriptions; "unknown" means we could not tell.
- DICOM headers were de-identified (PS3.15 basic profile superset) before metadata was read; the
  pool stores PNGs and de-identified fields only.
- Licences differ per source (below); the CQ500 slice is non-commercial (CC BY-NC-SA 4.0); the
  InVesalius head CT is GPL-2 data.

## Sources

{sources}
"""


def load_configured_pool(pool: str | None, cache_dir: str) -> ImagePool:
    """The pool a run uses: `data.pool` when set, else the bundled seed pool cached in `data.cache_dir`.

    Call it as `load_configured_pool(config.data.pool, config.data.cache_dir)`.
    """
    return load_pool(pool if pool else ensure_seed_pool(cache_dir))
