"""The run's timeline: which actor was busy with what, when (`timeline.jsonl`), and what it shows.

Actors report busy spans (`messages.Span`, wall-clock seconds); the cycle writes them to
`runs/<name>/timeline.jsonl`, one JSON object a line: `{"actor", "kind", "start", "end"}` with seconds
since the run started. The report draws it; `overlap` answers the flywheel's own question — how much of
the time the learners trained was the generator pool generating? Pure: no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from medgr2_ray.messages import Span


def write_timeline(path: Path, spans: Iterable[Span], t0: float) -> Path:
    """Write spans (sorted by start) with times relative to `t0`."""
    rows = sorted(spans, key=lambda s: (s.start, s.actor))
    path.write_text("".join(json.dumps({"actor": s.actor, "kind": s.kind, "start": round(s.start - t0, 4),
                                        "end": round(s.end - t0, 4)}) + "\n" for s in rows))
    return path


def read_timeline(path: Path) -> list[Span]:
    """The spans of a `timeline.jsonl` ([] when there is none)."""
    if not path.is_file():
        return []
    return [Span(str(r["actor"]), str(r["kind"]), float(r["start"]), float(r["end"]))
            for r in map(json.loads, path.read_text().splitlines()) if r]


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


def overlap(spans: Sequence[Span], busy_kinds: tuple[str, ...], during_kinds: tuple[str, ...]) -> float | None:
    """Share of the time any `during_kinds` span ran during which some `busy_kinds` span also ran
    (kinds match by prefix); None when `during_kinds` never ran."""
    during = merge((s.start, s.end) for s in spans if s.kind.startswith(during_kinds))
    if not during:
        return None
    busy = merge((s.start, s.end) for s in spans if s.kind.startswith(busy_kinds))
    return length(intersect(busy, during)) / length(during)
