"""Which co-evolution rounds a run directory holds complete, and whether a config may continue them.

A round k is complete when `data/round_k/DONE.json` exists. The cycle writes it last, after the
round's data files and the exact checkpoints of G and R (`checkpoints/rounds/round_k/`) are in place,
and every one of those writes is a rename-into-place: a crash at any moment leaves either a complete
round or one without DONE, which `medgr2 run --resume` redoes from its start (its directory is
replaced, never appended to).

DONE.json records:
- `fingerprint`: the config fields that shape the rounds (seed, pool and split, cycle settings except
  the number of rounds, selection, grading, G's and R's model and learner settings), flattened to
  dotted names, so a resume with another config is refused with the name of the field that differs
  instead of mixing data made under two configs;
- `files`: the sha256 of every data file of the round, so data edited after the round finished is an
  error rather than silently trained on;
- `previous`: the sha256 of round k-1's DONE.json. Rounds count as complete only as an unbroken chain
  from round 0, so a marker left behind by an earlier run in the same directory (a run started over
  without --resume, or one that had more rounds) is never taken for part of this one.
No Ray and no models here: pure files, so this logic is tested on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgr2_ray.checkpoint import CheckpointError, atomic_write_bytes, load_json
from medgr2_ray.config import Config
from medgr2_ray.data.store import read_samples
from medgr2_ray.types import Sample

DONE = "DONE.json"
FINAL = "FINAL.json"
KEEP_CHECKPOINTS = 2  # the last two rounds: a round whose DONE is lost can still be redone from the one before

# Config sections that shape what the rounds produce; `rounds` itself is left out so a finished run
# can be continued with more rounds. Resource sizing (CPUs/GPUs per rank, pool sizes, engine batch)
# is left out too: it changes where and how fast the work runs, not what it means.
_SECTIONS = ("cycle", "selection", "graded", "generator", "reward_model", "learner")
_EXCLUDED = {"cycle.rounds", "learner.num_cpus_per_rank", "learner.num_gpus_per_rank",
             # how often and how a learner recovers, not what it learns
             "learner.checkpoint_every", "learner.max_failures",
             # the continuous mode's own knobs: the rounds neither read them nor change with them
             "cycle.mode", "cycle.publish_every", "cycle.generator_steps_per_kept", "cycle.rm_steps_per_kept",
             "cycle.seed_share", "cycle.generator_staleness", "cycle.reward_staleness",
             "selection.window", "selection.keep_fraction", "selection.quota_slack"}


class IncompatibleRunError(CheckpointError):
    """A run directory's completed rounds cannot be continued with this config (or are damaged)."""


@dataclass(frozen=True)
class RoundRecord:
    """One complete round, as its DONE.json describes it."""

    round: int
    generator_version: int
    rm_version: int
    kept: int
    previous: str | None  # sha256 of round k-1's DONE.json (None for round 0)
    digest: str  # sha256 of this round's DONE.json
    fingerprint: dict[str, Any]
    path: Path  # the DONE.json file


def round_dir(run_dir: Path, k: int) -> Path:
    """Where round k's data lives."""
    return run_dir / "data" / f"round_{k}"


def round_checkpoint(run_dir: Path, k: int) -> Path:
    """Where G's and R's exact checkpoints after round k live (`generator/`, `reward_model/`)."""
    return run_dir / "checkpoints" / "rounds" / f"round_{k}"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, out)
    else:
        out[prefix] = value


def _ids_digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def rounds_fingerprint(cfg: Config, pool_image_ids: Sequence[str], train_image_ids: Sequence[str]) -> dict[str, Any]:
    """The config fields (and image sets) that shape the rounds, as {dotted name: JSON value}."""
    dumped = cfg.model_dump(mode="json")
    out: dict[str, Any] = {"run.seed": cfg.run.seed, "data.pool": cfg.data.pool,
                           "data.test_fraction": cfg.data.test_fraction, "data.max_pixels": cfg.data.max_pixels,
                           # the pool's contents, not only its path: images added to a pool folder change the split
                           "data.pool_images": _ids_digest(sorted(pool_image_ids)),
                           "data.train_images": _ids_digest(train_image_ids)}
    for section in _SECTIONS:
        _flatten(section, dumped[section], out)
    return {k: v for k, v in out.items() if k not in _EXCLUDED}


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable 'field: completed rounds used X, this config has Y' lines, one per differing field."""
    missing = object()
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            lines.append(f"{key}: the completed rounds used {show(old)}, this config has {show(new)}")
    return lines


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_files(directory: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != DONE
            and not p.name.startswith(".")}


def write_done(run_dir: Path, k: int, generator_version: int, rm_version: int, kept: int,
               fingerprint: Mapping[str, Any], previous: str | None) -> RoundRecord:
    """Mark round k complete (call it last, after its data files and checkpoints are in place)."""
    path = round_dir(run_dir, k) / DONE
    record = {"round": k, "generator_version": generator_version, "rm_version": rm_version, "kept": kept,
              "previous": previous, "files": _data_files(path.parent), "fingerprint": dict(fingerprint)}
    data = json.dumps(record, indent=1, allow_nan=False).encode()
    atomic_write_bytes(path, data)
    return RoundRecord(k, generator_version, rm_version, kept, previous, hashlib.sha256(data).hexdigest(),
                       dict(fingerprint), path)


def _read_done(path: Path, k: int) -> tuple[dict[str, Any], str] | None:
    """DONE.json's record and digest; None when it is absent or unreadable (then the round is redone)."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        record = json.loads(data)
    except json.JSONDecodeError:
        return None  # written atomically, so this is damage from outside: redo the round rather than trust it
    if not isinstance(record, dict) or record.get("round") != k:
        return None
    return record, hashlib.sha256(data).hexdigest()


def _check_files(record: Mapping[str, Any], path: Path) -> None:
    for name, want in dict(record.get("files", {})).items():
        file = path.parent / name
        if not file.is_file() or _sha256(file) != want:
            raise IncompatibleRunError(
                f"{file}: changed or missing after round {record['round']} was completed ({path} records its "
                "sha256); later rounds were built on the original. Restore it, or run without --resume to "
                "start the rounds over")


def completed_rounds(run_dir: Path) -> list[RoundRecord]:
    """The complete rounds 0, 1, ... as an unbroken chain (see the module docstring); [] if none."""
    records: list[RoundRecord] = []
    previous: str | None = None
    k = 0
    while (found := _read_done(round_dir(run_dir, k) / DONE, k)) is not None:
        record, digest = found
        if record.get("previous") != previous:
            break  # a marker from an earlier run in this directory, not a continuation of this chain
        _check_files(record, round_dir(run_dir, k) / DONE)
        records.append(RoundRecord(k, int(record["generator_version"]), int(record["rm_version"]),
                                   int(record["kept"]), previous, digest, dict(record["fingerprint"]),
                                   round_dir(run_dir, k) / DONE))
        previous, k = digest, k + 1
    return records


def check_resumable(records: Sequence[RoundRecord], fingerprint: Mapping[str, Any], rounds: int) -> None:
    """Refuse, naming the fields, to continue rounds made under another config or to shrink a run."""
    if not records:
        return
    differences = fingerprint_differences(records[-1].fingerprint, fingerprint)
    if differences:
        raise IncompatibleRunError(
            f"{records[-1].path.parent.parent}: cannot resume the co-evolution rounds with this config:\n  "
            + "\n  ".join(differences)
            + "\nResume with the config the rounds were made with, run without --resume to start the rounds "
            "over, or pick another run.name.")
    if records[-1].round > rounds:
        raise IncompatibleRunError(
            f"{records[-1].path.parent.parent}: {records[-1].round} rounds are complete but cycle.rounds={rounds}; "
            f"resume with cycle.rounds>={records[-1].round} (completed rounds are never thrown away on resume)")


def write_final(run_dir: Path, last: RoundRecord, reward_dir: Path) -> None:
    """Record that R's directory was written from the end of the chain ending at `last`."""
    atomic_write_bytes(run_dir / "checkpoints" / "rounds" / FINAL,
                       json.dumps({"round": last.round, "done": last.digest,
                                   "reward_model": str(reward_dir.relative_to(run_dir))}).encode())


def final_reward_dir(run_dir: Path, last: RoundRecord) -> Path | None:
    """R's directory if it was written after exactly this last complete round, else None."""
    path = run_dir / "checkpoints" / "rounds" / FINAL
    try:
        final = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    reward_dir = run_dir / str(final.get("reward_model", ""))
    ok = final.get("done") == last.digest and final.get("reward_model") and reward_dir.is_dir() \
        and any(reward_dir.iterdir())
    return reward_dir if ok else None


def clear_final(run_dir: Path) -> None:
    """Forget which rounds R's directory came from (called before any round work starts)."""
    (run_dir / "checkpoints" / "rounds" / FINAL).unlink(missing_ok=True)


def forget_rounds(run_dir: Path) -> list[Path]:
    """Remove every round's DONE.json (the rounds start over: an earlier run's rounds in this directory
    must never count as this run's); returns the markers removed. The data files stay until each
    round is redone, as they did before resume existed."""
    markers = sorted((run_dir / "data").glob(f"round_*/{DONE}"))
    for marker in markers:
        marker.unlink()
    return markers


def completed_data(run_dir: Path, records: Sequence[RoundRecord]) -> tuple[list[Sample], list[dict[str, Any]]]:
    """The kept samples (in the order rounds kept them) and the summaries of complete rounds 1..k."""
    kept: list[Sample] = []
    summaries: list[dict[str, Any]] = []
    for record in records:
        if record.round == 0:
            continue
        kept += read_samples(round_dir(run_dir, record.round) / "kept.jsonl")
        summaries.append(load_json(round_dir(run_dir, record.round) / "summary.json"))
    return kept, summaries


def prune_checkpoints(run_dir: Path, k: int) -> list[Path]:
    """Delete round checkpoints other than the last `KEEP_CHECKPOINTS` up to round k; returns those removed."""
    import shutil

    keep = {f"round_{j}" for j in range(k - KEEP_CHECKPOINTS + 1, k + 1)}
    removed = []
    for path in sorted((run_dir / "checkpoints" / "rounds").glob("round_*")):
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)
            removed.append(path)
    return removed
