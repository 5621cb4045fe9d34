"""The bundled seed pool: real images of >= 8 modalities, >= 200 images, provenance, determinism."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from medgr2_ray.data.seedpool import SOURCES, ensure_seed_pool, missing_sources
from medgr2_ray.data.store import load_pool


def test_counts_modalities_studies_and_provenance(seed_pool_dir: Path) -> None:
    pool = load_pool(seed_pool_dir)
    counts = pool.counts_by_modality()
    assert len(pool) >= 200
    assert set(counts) >= {"CT", "MR", "X-Ray", "Ultrasound", "Nuclear Medicine", "Fundus Photography",
                           "Histopathology", "Microscopy"}
    assert min(counts.values()) >= 10  # every modality has enough images to ask about
    assert len(pool.studies()) >= 20
    assert "Other" not in counts
    for image in pool.images:
        assert image.source.split(":")[0] in ("pydicom-data", "skimage", "nibabel", "matplotlib", "debian")
        assert image.licence and image.study_id.startswith("st-") and image.anatomy
        assert Path(image.path).is_file()
    # every listed source contributed, except optional ones this machine lacks (the card names those)
    missing = {s.filename for s in missing_sources(None)}
    assert {i.source.split(":", 1)[1] for i in pool.images} == {s.filename.rsplit("/", 1)[-1] for s in SOURCES
                                                               if s.filename not in missing}
    assert set(pool.report["missing_optional_sources"]) == missing
    if not missing:  # with the Debian sources, X-ray has three studies: chest, leg, neck angiogram
        assert len({i.study_id for i in pool.images if i.modality.value == "X-Ray"}) == 3


def test_card_is_honest_and_contact_sheet_is_an_image(seed_pool_dir: Path) -> None:
    card = (seed_pool_dir / "CARD.md").read_text()
    assert "Few patients" in card and "not independent" in card and "CC BY-NC-SA" in card
    with Image.open(seed_pool_dir / "contact_sheet.png") as sheet:
        assert sheet.width >= 16 * 90 and sheet.height > 13 * 100  # all >= 200 thumbnails fit


def test_ensure_builds_once_deterministically_then_reuses(tmp_path: Path, seed_pool_dir: Path) -> None:
    root = ensure_seed_pool(tmp_path / "cache")  # a second, independent build
    assert (root / "pool.jsonl").read_bytes() == (seed_pool_dir / "pool.jsonl").read_bytes()
    first = sorted((seed_pool_dir / "images").iterdir())
    assert [p.read_bytes() for p in first[:20]] == [(root / "images" / p.name).read_bytes() for p in first[:20]]
    stamp = (root / "pool.jsonl").stat().st_mtime_ns
    assert ensure_seed_pool(tmp_path / "cache") == root
    assert (root / "pool.jsonl").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]  # no build leftovers


def test_configured_pool_prefers_data_pool(seed_pool_dir: Path, tmp_path: Path) -> None:
    from medgr2_ray.data.seedpool import load_configured_pool

    pool = load_configured_pool(str(seed_pool_dir), str(tmp_path / "never-built"))
    assert pool.root == seed_pool_dir.resolve() and not (tmp_path / "never-built").exists()
