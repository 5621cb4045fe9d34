"""Readers of a run directory's files, shared by the report and `medgr2 run`'s summary (no heavy imports).

The contracts (what the run writes, what these read):
- `metrics.jsonl`: one record per line, `{"time", "stage", "step", <figures>}` (`metrics.RunLog`);
- `eval/<n>_<point>.json`: an accuracy point (`accuracy`, `correct`, `total`, `blind_bound`,
  `by_modality`, ...), numbered so the files sort in run order; `transfer_*.json` and `*.errors.json`
  beside them are other things;
- `data/*/samples.jsonl`: every generated candidate with its provenance (`data.store.read_samples`),
  one folder per round (`round_k`) or one stream (`stream`); `data/*/failures.jsonl`: outputs that did
  not parse, with their reasons;
- `timeline.jsonl`: which actor was busy with what, when (`timeline.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medgr2_ray.data.store import read_samples
from medgr2_ray.types import Sample


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every `metrics.jsonl` record in order (empty when the run logged nothing)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def point_name(stem: str) -> str:
    """`1_after_sft` -> `after_sft` (the number only orders the files)."""
    head, _, rest = stem.partition("_")
    return rest if head.isdigit() and rest else stem


def is_stage_point(name: str) -> bool:
    """Whether an accuracy point is the held-out test before or after a solver stage (`untrained`,
    `after_*`), as opposed to another test set that has its own questions."""
    return name == "untrained" or name.startswith("after_")


def read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Accuracy points by name, in run order."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((run_dir / "eval").glob("*.json")):
        if path.name.startswith("transfer_") or path.name.endswith(".errors.json"):
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and "accuracy" in record:
            out[point_name(path.stem)] = record
    return out


def _folder_key(path: Path) -> tuple[int, str]:
    """round_2 before round_10; other folders (`stream`) after the rounds."""
    name = path.parent.name
    suffix = name.rsplit("_", 1)[-1]
    return (int(suffix), name) if name.startswith("round_") and suffix.isdigit() else (1 << 30, name)


def candidate_files(run_dir: Path) -> list[Path]:
    """Every `data/*/samples.jsonl`, rounds in order."""
    return sorted((run_dir / "data").glob("*/samples.jsonl"), key=_folder_key)


def read_candidates(run_dir: Path) -> list[tuple[str, Sample]]:
    """(folder name, sample) for every generated candidate of the run."""
    return [(path.parent.name, s) for path in candidate_files(run_dir) for s in read_samples(path)]


def failure_counts(run_dir: Path) -> dict[str, int]:
    """Outputs that did not parse, per data folder."""
    return {path.parent.name: sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            for path in sorted((run_dir / "data").glob("*/failures.jsonl"), key=_folder_key)}
