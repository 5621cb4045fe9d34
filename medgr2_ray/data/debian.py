"""Real medical volumes that Debian packages ship, fetched once into the cache for the seed pool.

Why: the pip-installable sources give only 23 studies, too few for a held-out split by study to leave
every modality a few training studies. Debian's `invesalius-examples` (a head CT volume),
`mricron-data` (the Colin27 "ch2" brain MRI) and `libgdcm3.0` (an X-ray angiogram in its examples) add
real studies. The packages are downloaded from the
Debian archive (reachable wherever `apt` is), checked against pinned SHA-256 sums, and only the
needed members are extracted, with plain Python (an `.deb` is an `ar` archive holding `data.tar.xz`):
no root, no `apt`, no `dpkg`. Nothing runs from the packages; they are data.

`fetch_debian_data(cache_dir)` is idempotent; `debian_file(cache_dir, member)` finds a member in the
given cache, in `$MEDGR2_DEBIAN_DIR`, in the default cache (`~/.cache/medgr2_ray/debian`, where
scripts/setup.sh puts them, so a run or test with a cache of its own still finds them) or in a system
install (`/usr/share/...`); None when none has it (the seed pool then builds without it and says so).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from medgr2_ray.config import DataConfig

DEBIAN_MIRROR = os.environ.get("MEDGR2_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class DebianPackage:
    """One pinned package and the members the seed pool reads from it."""

    name: str
    pool_path: str  # path under the mirror
    sha256: str
    members: tuple[str, ...]  # paths inside data.tar, e.g. "usr/share/mricron/templates/ch2.nii.gz"


PACKAGES: tuple[DebianPackage, ...] = (
    DebianPackage("mricron-data", "pool/main/m/mricron/mricron-data_1.2.20211006+dfsg-4_all.deb",
                  "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
                  ("usr/share/mricron/templates/ch2.nii.gz", "usr/share/doc/mricron-data/copyright")),
    DebianPackage("invesalius-examples", "pool/main/i/invesalius/invesalius-examples_3.1.99998-4_all.deb",
                  "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
                  ("usr/share/doc/invesalius-examples/examples/Cranium.inv3",
                   "usr/share/doc/invesalius-examples/copyright")),
    # GDCM's example file: a real 4-frame X-ray angiogram of the neck vessels (the pool's third X-ray
    # study; pydicom-data's radiographs are one chest and one leg film). Only the doc member is read.
    DebianPackage("libgdcm3.0", "pool/main/g/gdcm/libgdcm3.0_3.0.21-1_amd64.deb",
                  "f307d1aa932c5dcb2d2d541bdf8bb8d227421bacd427f62b128ee5116bd039b2",
                  ("usr/share/doc/libgdcm3.0/examples/00191113.dcm", "usr/share/doc/libgdcm3.0/copyright")),
)


def debian_root(cache_dir: str | Path) -> Path:
    """Where the extracted members live: `<cache>/debian/` mirrors the packages' file tree."""
    return Path(cache_dir).expanduser() / "debian"


DEFAULT_CACHE: str = DataConfig.model_fields["cache_dir"].default


def debian_file(cache_dir: str | Path | None, member: str) -> Path | None:
    """The extracted `member` from the cache, the env/default caches or a system install, else None."""
    roots = [debian_root(cache_dir)] if cache_dir is not None else []
    if os.environ.get("MEDGR2_DEBIAN_DIR"):
        roots.append(Path(os.environ["MEDGR2_DEBIAN_DIR"]).expanduser())
    roots += [debian_root(DEFAULT_CACHE), Path("/")]
    for root in roots:
        path = root / member
        if path.is_file():
            return path
    return None


def _ar_member(deb: bytes, prefix: str) -> tuple[str, bytes]:
    """The first member of an `ar` archive whose name starts with `prefix` (name, bytes)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60:pos + 60 + size]
        if name.startswith(prefix):
            return name, body
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    raise ValueError(f"no {prefix}* member in the .deb")


def extract_members(deb: bytes, members: tuple[str, ...], dest: Path) -> list[Path]:
    """Extract `members` (regular files only, names checked, never a path outside `dest`)."""
    name, payload = _ar_member(deb, "data.tar")
    if name.endswith(".zst"):
        raise ValueError(f"{name}: zstd-compressed .deb members are not supported by Python's tarfile")
    wanted = set(members)
    out: list[Path] = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:  # xz, gz or plain
        for info in tar:
            member = info.name.removeprefix("./")
            if member not in wanted or not info.isfile():
                continue
            target = dest / member
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(tar.extractfile(info).read())  # type: ignore[union-attr]
            os.replace(tmp, target)
            out.append(target)
    missing = wanted - {str(p.relative_to(dest)) for p in out}
    if missing:
        raise ValueError(f"members not in the package: {sorted(missing)}")
    return out


def fetch_debian_data(cache_dir: str | Path, timeout: float = 120.0) -> dict[str, str]:
    """Download, verify and extract every package not yet in the cache; returns package -> status."""
    root = debian_root(cache_dir)
    status: dict[str, str] = {}
    for pkg in PACKAGES:
        if all(debian_file(cache_dir, m) for m in pkg.members):
            status[pkg.name] = "present"
            continue
        url = f"{DEBIAN_MIRROR}/{pkg.pool_path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pinned https/http mirror)
                deb = response.read()
        except OSError as exc:
            status[pkg.name] = f"not fetched ({exc}); the seed pool builds without it"
            continue
        digest = hashlib.sha256(deb).hexdigest()
        if digest != pkg.sha256:
            raise ValueError(f"{url}: SHA-256 {digest} != pinned {pkg.sha256}; refusing to use it "
                             "(set MEDGR2_DEBIAN_MIRROR to a mirror that serves the pinned version)")
        extract_members(deb, pkg.members, root)
        status[pkg.name] = "fetched"
    return status
