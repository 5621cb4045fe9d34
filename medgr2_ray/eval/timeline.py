"""The run's timeline: which actor was busy with what, when (`runs/<name>/timeline.jsonl`), and what it shows.

Actors report busy spans (`messages.Span`, wall-clock seconds) as they work; the cycle writes them once,
sorted, to `timeline.jsonl`: one JSON object a line, `{"actor", "kind", "start", "end"}`, with seconds
since the run started. `kind` says what the actor was doing: "generate", "score", "train:generator_bootstrap",
"train:generator_rft", "train:reward_bootstrap", "train:reward_refresh", "train:solver_sft", "train:grpo",
"evaluate", ... The report draws it as a Gantt chart; `busy_seconds` adds up the wall time per kind;
`overlap` answers the flywheel's own question — how much of the time G and R trained was the generator
pool generating? Pure: no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from medgr2_ray.messages import Span

TIMELINE_FILE = "timeline.jsonl"
STAGES_FILE = "stages.json"  # the cycle's wall time per stage: {stage: seconds}, in order
# The timeline's names for G's and R's training after their bootstrap: the flywheel's steady state, in
# which the generator pool should be generating (`overlap` measures how much it is).
GENERATOR_REFRESH, REWARD_REFRESH = "train:generator_rft", "train:reward_refresh"


def write_timeline(run_dir: Path, spans: Iterable[Span], t0: float) -> Path:
    """Write spans (sorted by start) to `run_dir/timeline.jsonl`, times relative to `t0`."""
    rows = sorted(spans, key=lambda s: (s.start, s.actor))
    path = Path(run_dir) / TIMELINE_FILE
    path.write_text("".join(json.dumps({"actor": s.actor, "kind": s.kind, "start": round(s.start - t0, 4),
                                        "end": round(s.end - t0, 4)}) + "\n" for s in rows), encoding="utf-8")
    return path


def read_timeline(run_dir: str | Path) -> list[Span]:
    """Every span of a run ([] when the run wrote no timeline); a line that is not a span is an error
    naming the file and line."""
    path = Path(run_dir) / TIMELINE_FILE
    if not path.is_file():
        return []
    spans = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            spans.append(Span(str(d["actor"]), str(d["kind"]), float(d["start"]), float(d["end"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: not a timeline span ({exc}); expected "
                             '{"actor": str, "kind": str, "start": float, "end": float}') from None
    return spans


def merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of intervals as sorted, disjoint intervals."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of disjoint intervals."""
    return sum(end - start for start, end in intervals)


def intersect(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Intersection of two unions of disjoint, sorted intervals."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def busy_seconds(spans: Sequence[Span]) -> dict[str, float]:
    """Wall time per kind: the length of the union of that kind's spans (several actors doing the same
    kind at once count once), in order of first appearance."""
    return {kind: length(merge((s.start, s.end) for s in spans if s.kind == kind))
            for kind in dict.fromkeys(s.kind for s in spans)}


def overlap(spans: Sequence[Span], busy_kinds: tuple[str, ...], during_kinds: tuple[str, ...]) -> float | None:
    """Share of the time any `during_kinds` span ran during which some `busy_kinds` span also ran
    (kinds match by prefix); None when `during_kinds` never ran."""
    during = merge((s.start, s.end) for s in spans if s.kind.startswith(during_kinds))
    if not during:
        return None
    busy = merge((s.start, s.end) for s in spans if s.kind.startswith(busy_kinds))
    return length(intersect(busy, during)) / length(during)
