"""The run's timeline: which actor was busy with what, when (`runs/<name>/timeline.jsonl`).

One JSON object a line, `{"actor": str, "kind": str, "start": float, "end": float}`, with seconds since
the run started. `kind` says what the actor was doing: "generate", "score", "select", "train_generator",
"train_reward", "train_policy_sft", "train_policy_grpo", "evaluate", ... The report draws it as a Gantt
chart (one row per actor) and `medgr2 run`'s summary adds up the wall time per kind from it. Written by
the driver only (one writer per file); no Ray, so any part of the system can record a span it timed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

TIMELINE_FILE = "timeline.jsonl"


@dataclass(frozen=True)
class Span:
    """One stretch of one actor's work, in seconds since the run started."""

    actor: str
    kind: str
    start: float
    end: float


class Timeline:
    """Appends spans to `<run_dir>/timeline.jsonl`; `fresh` empties it first (a run that starts over)."""

    def __init__(self, run_dir: str | Path, fresh: bool = True) -> None:
        self.path = Path(run_dir) / TIMELINE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or not self.path.is_file():
            self.path.write_text("")
            self.t0 = time.time()
        else:  # resumed: keep the clock of the run the file started with
            spans = read_timeline(self.path.parent)
            self.t0 = time.time() - max((s.end for s in spans), default=0.0)

    def now(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.t0

    def record(self, actor: str, kind: str, start: float, end: float) -> None:
        """Append one span (times from `now()`)."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(Span(actor, kind, round(start, 3), round(end, 3)))) + "\n")

    @contextmanager
    def span(self, actor: str, kind: str) -> Iterator[None]:
        """Record the time the `with` block takes as one span of `actor` doing `kind`."""
        start = self.now()
        try:
            yield
        finally:
            self.record(actor, kind, start, self.now())


def read_timeline(run_dir: str | Path) -> list[Span]:
    """Every span of a run (empty when the run wrote no timeline); a line that is not a span is an error
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


def busy_seconds(spans: list[Span]) -> dict[str, float]:
    """Wall time per kind: the length of the union of that kind's spans (overlapping actors doing the
    same kind at once count once), in order of first appearance."""
    out: dict[str, float] = {}
    for kind in dict.fromkeys(s.kind for s in spans):
        total, reach = 0.0, float("-inf")
        for s in sorted((s for s in spans if s.kind == kind), key=lambda s: s.start):
            if s.end > reach:
                total += s.end - max(s.start, reach)
                reach = s.end
        out[kind] = total
    return out
