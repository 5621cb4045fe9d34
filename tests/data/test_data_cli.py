"""`medgr2 data ...` end to end, in-process: exit codes, printed counts, files written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_helpers import FIXTURES, dicom_file
from medgr2_ray.cli import main
from medgr2_ray.data.store import load_pool, read_samples


def test_seed_pool_prints_counts_and_writes_the_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              seed_pool_dir: Path) -> None:
    out = tmp_path / "seed"
    shutil.copytree(seed_pool_dir, out)  # reuse the session's build: --out on an existing pool needs --overwrite
    assert main(["data", "seed-pool", "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "Nuclear Medicine" in printed and "contact sheet" in printed
    assert (out / "contact_sheet.png").is_file() and (out / "CARD.md").is_file()
    assert f"{len(load_pool(out))} images" in printed


def test_ingest_exit_codes_and_salt_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("no images here")
    salt = tmp_path / "salt"
    assert main(["data", "ingest", str(junk), "--out", str(tmp_path / "p1"), "--salt-file", str(salt)]) == 1
    assert "nothing usable" in capsys.readouterr().out
    assert salt.stat().st_size == 32 and (salt.stat().st_mode & 0o777) == 0o600
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(dicom_file("CT_small.dcm"), good / "a.dcm")
    (good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    argv = ["data", "ingest", str(good), "--out", str(tmp_path / "p2"), "--salt-file", str(salt), "--workers", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ingested 1/2 files" in printed and "broken.png: corrupt" in printed
    report = json.loads((tmp_path / "p2" / "report.json").read_text())
    assert report["skipped_by_reason"] == {"corrupt": 1} and "broken" not in json.dumps(report)


def test_templates_and_convert(tmp_path: Path, seed_pool_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "templates", str(seed_pool_dir), "--out", str(tmp_path / "t.jsonl")]) == 0
    assert len(read_samples(tmp_path / "t.jsonl")) > len(load_pool(seed_pool_dir))
    assert main(["data", "convert", "omnimedvqa", str(FIXTURES / "omnimedvqa_slice.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "18 samples" in capsys.readouterr().out
