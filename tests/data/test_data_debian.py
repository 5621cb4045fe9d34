"""The Debian fetcher's unpacking and checks, on a real .deb built here (ar + data.tar.xz), offline.

The download itself is exercised by scripts/setup.sh (`medgr2 data fetch-debian`); these tests prove
what must hold without network: only the named regular files come out, nothing escapes the cache, a
wrong checksum is refused with a message naming the URL and what to do.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from medgr2_ray.data import debian


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    return bytes(out)


def _deb(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo("./" + name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", buf.getvalue())])


def test_only_named_regular_files_are_extracted(tmp_path: Path) -> None:
    deb = _deb({"usr/share/x/ct.nii.gz": b"volume", "usr/bin/tool": b"#!/bin/sh\n"},
               links={"usr/share/x/evil": "/etc/passwd"})
    out = debian.extract_members(deb, ("usr/share/x/ct.nii.gz",), tmp_path)
    assert out == [tmp_path / "usr/share/x/ct.nii.gz"] and out[0].read_bytes() == b"volume"
    assert not (tmp_path / "usr/bin").exists() and not (tmp_path / "usr/share/x/evil").exists()
    with pytest.raises(ValueError, match="usr/share/x/evil"):  # a link is not a regular file
        debian.extract_members(deb, ("usr/share/x/evil",), tmp_path)
    with pytest.raises(ValueError, match="ar archive"):
        debian.extract_members(b"PK\x03\x04 not a deb", ("a",), tmp_path)


def test_wrong_checksum_is_refused_and_present_files_are_not_refetched(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    deb = _deb({"usr/share/x/ct.nii.gz": b"volume"})
    (tmp_path / "mirror/pool").mkdir(parents=True)
    (tmp_path / "mirror/pool/x.deb").write_bytes(deb)
    pkg = debian.DebianPackage("x", "pool/x.deb", "0" * 64, ("usr/share/x/ct.nii.gz",))
    monkeypatch.setattr(debian, "PACKAGES", (pkg,))
    monkeypatch.setattr(debian, "DEBIAN_MIRROR", (tmp_path / "mirror").as_uri())
    monkeypatch.setattr(debian, "DEFAULT_CACHE", str(tmp_path / "no-default"))
    with pytest.raises(ValueError, match="refusing to use it"):
        debian.fetch_debian_data(tmp_path / "cache")
    import hashlib

    good = debian.DebianPackage("x", "pool/x.deb", hashlib.sha256(deb).hexdigest(), pkg.members)
    monkeypatch.setattr(debian, "PACKAGES", (good,))
    assert debian.fetch_debian_data(tmp_path / "cache") == {"x": "fetched"}
    assert debian.debian_file(tmp_path / "cache", "usr/share/x/ct.nii.gz").read_bytes() == b"volume"
    assert debian.fetch_debian_data(tmp_path / "cache") == {"x": "present"}
    missing = debian.DebianPackage("y", "pool/absent.deb", "0" * 64, ("usr/share/y/z",))
    monkeypatch.setattr(debian, "PACKAGES", (missing,))
    assert debian.fetch_debian_data(tmp_path / "cache")["y"].startswith("not fetched")
