"""Parallel ingestion on a real Ray cluster gives exactly the pool a sequential run gives."""

from __future__ import annotations

import shutil
from pathlib import Path

from data_helpers import SALT, dicom_file, skimage_file
from medgr2_ray.data.ingest import IngestOptions, ingest_paths
from medgr2_ray.data.parallel import ingest_paths_parallel


def test_ray_ingest_equals_sequential_ingest(tmp_path: Path, ray_cluster: None) -> None:
    inputs = tmp_path / "in"
    (inputs / "series").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm", "test-SR.dcm"):
        shutil.copy(dicom_file(name), inputs / "series" / name)
    shutil.copy(skimage_file("ihc.png"), inputs / "ihc.png")
    (inputs / "empty.dcm").write_bytes(b"")
    options = IngestOptions(salt=SALT, max_frames=4)
    serial = ingest_paths([inputs], tmp_path / "serial", options)
    # tiny batches and 2 in flight: results arrive out of order and must be re-ordered
    parallel = ingest_paths_parallel([inputs], tmp_path / "parallel", options, batch_bytes=1, max_in_flight=2)
    assert parallel.to_dict() == serial.to_dict()
    assert parallel.images_written == 2 + 4 + 1 and parallel.duplicates == 1
    assert (tmp_path / "parallel" / "pool.jsonl").read_bytes() == (tmp_path / "serial" / "pool.jsonl").read_bytes()
    images = sorted(p.name for p in (tmp_path / "parallel" / "images").iterdir())
    assert images == sorted(p.name for p in (tmp_path / "serial" / "images").iterdir())
