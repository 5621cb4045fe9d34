"""`medgr2 eval`: score benchmark predictions and print the tables.

`medgr2 eval score PREDICTIONS.jsonl [--test TEST.json] [--json OUT.json]` reads OmniMedVQA-style
predictions (question_id, model_answer, gt_answer, ...). Alone, it scores every prediction with the
paper's protocol, broken down by source dataset; with the test file it scores exactly the test set
under the paper and the strict (options-aware) protocols, broken down by dataset, modality and question
type. Scoring itself lives in `medgr2_ray.eval.scoring`; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medgr2_ray.eval.scoring import ProtocolScore, ScoreReport, Tally, score_files


def _pct(t: Tally) -> str:
    return f"{100 * t.accuracy:.2f}%"


def _breakdown_table(title: str, scores: tuple[ProtocolScore, ...], attr: str) -> Table:
    """One row per group (dataset, modality or question type), one accuracy column per protocol."""
    table = Table(title=title, title_justify="left")
    table.add_column(title.split(" by ")[-1])
    table.add_column("n", justify="right")
    for s in scores:
        table.add_column(f"{s.protocol} correct", justify="right")
        table.add_column(f"{s.protocol} acc", justify="right")
    groups: dict[str, Tally] = getattr(scores[0], attr)
    for name, tally in groups.items():
        row = [name, f"{tally.total:,}"]
        for s in scores:
            t = getattr(s, attr)[name]
            row += [f"{t.correct:,}", _pct(t)]
        table.add_row(*row)
    return table


def print_report(report: ScoreReport, console: Console) -> None:
    """The overall table, the breakdowns that carry information, and the accounting."""
    overall = Table(title="Overall", title_justify="left")
    for col in ("protocol", "correct / total", "accuracy", "macro-F1", "no valid answer"):
        overall.add_column(col, justify="left" if col == "protocol" else "right")
    for s in report.scores:
        overall.add_row(s.protocol, f"{s.overall.correct:,} / {s.overall.total:,}", _pct(s.overall),
                        f"{100 * s.macro_f1:.2f}", f"{s.no_answer:,}")
    console.print(overall)
    for title, attr in (("Accuracy by dataset", "by_dataset"), ("Accuracy by modality", "by_modality"),
                        ("Accuracy by question type", "by_question_type")):
        groups = getattr(report.scores[0], attr)
        if list(groups) != ["unknown"]:  # without test records only the dataset is known
            console.print(_breakdown_table(title, report.scores, attr))
    if report.unanswered or report.unmatched_predictions:
        console.print(f"test questions without a prediction (scored wrong): {report.unanswered:,}; "
                      f"predictions outside the test set (not scored): {report.unmatched_predictions:,}")
    for problem in report.problems[:20]:
        console.print(f"[yellow]warning[/yellow]: {problem}", highlight=False)
    if len(report.problems) > 20:
        console.print(f"[yellow]... and {len(report.problems) - 20} more problems[/yellow]")


def _score(args: argparse.Namespace) -> int:
    try:
        report = score_files(args.predictions, args.test)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"medgr2 eval score: {exc}") from None
    print_report(report, Console(width=args.width))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` command group."""
    group = sub.add_parser("eval", help="score benchmark predictions")
    commands = group.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    score = commands.add_parser("score", help="accuracy and macro-F1 of a predictions JSONL (OmniMedVQA style)")
    score.add_argument("predictions", help="JSON lines with question_id, model_answer, gt_answer")
    score.add_argument("--test", default=None, help="OmniMedVQA-format test JSON/JSONL: enables strict scoring "
                       "and per-modality / question-type breakdowns on exactly that set")
    score.add_argument("--json", default=None, help="also write the full report as JSON to this path")
    score.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    score.set_defaults(handler=_score)
