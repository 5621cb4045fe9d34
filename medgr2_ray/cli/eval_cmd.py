"""`medgr2 eval`: score benchmark predictions and print the tables.

`medgr2 eval transfer CONFIG --protocol cross-modality|cross-task [--steps N] [--set k=v]` runs Med-R1's
transfer protocol on the config's study split and writes `runs/<name>/eval/transfer_<protocol>.{json,md}`.

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

from medgr2_ray.cli.config_cmd import add_config_args
from medgr2_ray.cli.errors import UserError
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
        raise UserError(str(exc)) from exc
    print_report(report, Console(width=args.width))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _transfer(args: argparse.Namespace) -> int:
    """Med-R1 cross-modality / cross-task transfer on the config's split; see medgr2_ray/eval/transfer.py."""
    from medgr2_ray.config import load_config
    from medgr2_ray.eval.report import build_report
    from medgr2_ray.eval.transfer import markdown
    from medgr2_ray.eval.rundata import prepare_data
    from medgr2_ray.loop.cycle import with_absolute_paths
    from medgr2_ray.loop.runtime import init_ray
    from medgr2_ray.loop.transfer import run_transfer
    from medgr2_ray.models.tiny import ensure_model_dir

    cfg = with_absolute_paths(load_config(args.config, args.overrides))
    init_ray(cfg)
    data = prepare_data(cfg)
    run_dir = Path(cfg.run.root) / cfg.run.name
    model_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, cfg.run.seed, "policy")
    try:
        matrix = run_transfer(cfg, data, model_dir, run_dir, args.protocol, args.steps,
                              progress=lambda stage, done, total: print(f"{stage}: {done}/{total} solvers", flush=True))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print(markdown(matrix))
    print(f"written: {run_dir / 'eval' / f'transfer_{args.protocol}.json'} (and .md)")
    if (run_dir / "report" / "index.html").is_file():  # a finished run: show the matrix in its report too
        print(f"report: {build_report(run_dir)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` command group."""
    group = sub.add_parser("eval", help="score benchmark predictions; run transfer protocols")
    commands = group.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    score = commands.add_parser("score", help="accuracy and macro-F1 of a predictions JSONL (OmniMedVQA style)")
    score.add_argument("predictions", help="JSON lines with question_id, model_answer, gt_answer")
    score.add_argument("--test", default=None, help="OmniMedVQA-format test JSON/JSONL: enables strict scoring "
                       "and per-modality / question-type breakdowns on exactly that set")
    score.add_argument("--json", default=None, help="also write the full report as JSON to this path")
    score.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    score.set_defaults(handler=_score)
    transfer = commands.add_parser("transfer", help="Med-R1 cross-modality / cross-task transfer matrix: fine-tune a "
                                   "fresh solver per training group, test it on every held-out group")
    add_config_args(transfer, required=True)
    transfer.add_argument("--protocol", required=True, choices=["cross-modality", "cross-task"],
                          help="cross-modality: one solver per training modality; cross-task: one per task type")
    transfer.add_argument("--steps", type=_positive_int, default=None,
                          help="SFT steps per solver (default: eval.transfer_steps)")
    transfer.set_defaults(handler=_transfer)
