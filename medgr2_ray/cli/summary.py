"""What `medgr2 run` prints when it ends, read from the run directory alone.

Where the run is, how long each stage took (`timeline.jsonl`), how many generated samples selection
kept (`data/*/samples.jsonl`), and each held-out accuracy (`eval/*.json`) with its change from the
stage before; a stage that lowered held-out accuracy is said so in words, with how many points one
question is worth so the reader can tell a change from noise. No Ray, no models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medgr2_ray.eval.run_files import failure_counts, is_stage_point, read_candidates, read_evals
from medgr2_ray.eval.timeline import (GENERATOR_REFRESH, REWARD_REFRESH, STAGES_FILE, busy_seconds, overlap,
                                      read_timeline)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def kept_line(run_dir: Path) -> str | None:
    """How many generated candidates selection kept, and how many outputs never became a candidate;
    None when the run generated nothing."""
    candidates = read_candidates(run_dir)
    unparsed = sum(failure_counts(run_dir).values())
    if not candidates and not unparsed:
        return None
    kept = sum(1 for _, s in candidates if s.provenance.selected)
    return (f"generated samples: {kept} kept of {len(candidates)} scored candidates"
            + (f"; {unparsed} generator outputs did not parse (data/*/failures.jsonl)" if unparsed else ""))


def read_stage_seconds(run_dir: Path) -> dict[str, float]:
    """The wall time of each stage of the run (`stages.json`, written by the cycle), {} without one."""
    path = run_dir / STAGES_FILE
    return {str(k): float(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def flywheel_line(run_dir: Path) -> str | None:
    """How much of the time G and R trained after their bootstrap the generator pool was generating, and
    how much of the solver's SFT ran while G and R turned; None when the run's timeline shows no refresh."""
    spans = read_timeline(run_dir)
    busy = overlap(spans, ("generate",), (GENERATOR_REFRESH, REWARD_REFRESH))
    if busy is None:
        return None
    solver = overlap(spans, ("train:generator", "train:reward"), ("train:solver_sft",))
    tail = f"; G and R trained during {solver:.0%} of the solver's SFT" if solver is not None else ""
    return f"flywheel: the generator pool generated during {busy:.0%} of G's and R's training after their bootstrap{tail}"


def accuracy_lines(evals: dict[str, dict[str, Any]]) -> list[str]:
    """One line per point: accuracy, its change from the stage before (held-out stage points only; other
    test sets have other questions), the blind bound; then a plain sentence for every stage that
    lowered held-out accuracy."""
    lines, warnings, previous = [], [], None
    for name, ev in evals.items():
        acc, total = float(ev["accuracy"]), max(int(ev.get("total", 0)), 1)
        stage = is_stage_point(name)
        change = f"  {100 * (acc - previous[1]):+5.1f} points vs {previous[0]}" if stage and previous else ""
        lines.append(f"  {name:<11} {acc:6.1%} ({ev.get('correct', '?')}/{ev.get('total', '?')}){change}  "
                     f"image-blind bound {float(ev.get('blind_bound', 0.0)):.1%}")
        if stage and previous is not None and acc < previous[1] - 1e-9:
            warnings.append(f"  note: {name} LOWERED held-out accuracy by {100 * (previous[1] - acc):.1f} points "
                            f"(from {previous[1]:.1%} at {previous[0]}; one question is {100 / total:.1f} points "
                            f"of {total})")
        if stage:
            previous = (name, acc)
    return lines + warnings


def format_summary(run_dir: Path, seconds: float, report: Path | None, dashboard: str | None) -> str:
    """The whole end-of-run summary (see the module docstring)."""
    lines = [f"run directory: {run_dir}  (wall time {_minutes(seconds)})"]
    stages = read_stage_seconds(run_dir) or busy_seconds(read_timeline(run_dir))
    if stages:
        lines.append("wall time per stage: " + ", ".join(f"{kind} {_minutes(s)}" for kind, s in stages.items()))
    turning = flywheel_line(run_dir)
    if turning:
        lines.append(turning)
    kept = kept_line(run_dir)
    if kept:
        lines.append(kept)
    evals = read_evals(run_dir)
    if evals:
        lines += ["held-out accuracy:", *accuracy_lines(evals)]
    if report is not None:
        lines.append(f"report: {report}")
    if dashboard:
        lines.append(f"Ray dashboard (while the run is up): {dashboard}")
    if (run_dir / "logs" / "ray.log").is_file():
        lines.append(f"Ray's own log: {run_dir / 'logs' / 'ray.log'} (--verbose prints it here)")
    return "\n".join(lines)
