"""`medgr2 run CONFIG [--set k=v] [--resume] [--verbose]`: the MedGR² cycle end to end, with a progress bar
per stage and a summary at the end (`summary.py`).

At the default verbosity the terminal holds our progress bars, warnings and the summary; Ray's and Ray
Train's own output goes to `runs/<name>/logs/ray.log` (`--verbose` prints it here instead). A config
whose actors cannot fit in `ray.num_cpus` is refused before Ray starts (`capacity.py`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from medgr2_ray.cli.config_cmd import add_config_args
from medgr2_ray.config import load_config

RAY_LOG = Path("logs") / "ray.log"  # inside the run directory


def _progress_printer() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A rich progress display with one bar per stage, and the function that closes it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bars.start()
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    return update, bars.stop


def _run(args: argparse.Namespace) -> int:
    from medgr2_ray.capacity import FLYWHEEL, check_fits

    start = time.perf_counter()
    # Before anything imports huggingface_hub, which reads it once: no "Writing model shards" bars when
    # this process builds the tiny models (actors get the same setting from init_ray).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    cfg = load_config(args.config, args.overrides)
    check_fits(cfg, FLYWHEEL)  # both modes keep the whole actor system alive from start to end
    from medgr2_ray.cli.summary import format_summary
    from medgr2_ray.loop.cycle import run_cycle
    from medgr2_ray.loop.runtime import init_ray

    run_dir = Path(cfg.run.root).expanduser().resolve() / cfg.run.name
    log_file = None if args.verbose else run_dir / RAY_LOG
    if log_file is not None and not args.resume:
        log_file.unlink(missing_ok=True)  # a run that starts over starts its log over
    dashboard = init_ray(cfg, log_file)
    if dashboard:
        print(f"Ray dashboard: {dashboard}", flush=True)
    update, stop = _progress_printer()
    try:
        result = run_cycle(cfg, update, resume=args.resume)
    except Exception as exc:
        if log_file is not None:  # what the actors said before it failed is there, not on the terminal
            exc.add_note(f"Ray's log of this run: {log_file}")
        raise
    finally:
        stop()
    print()
    print(format_summary(result.run_dir, time.perf_counter() - start, result.report, dashboard))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `run` command."""
    parser = sub.add_parser("run", help="run the MedGR2 cycle (the flywheel or the rounds, solver SFT and GRPO, evaluation, report)")
    add_config_args(parser, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run in runs/<name>. Continuous mode: G, R and P restart from "
                        "their newest checkpoints, the kept store reloads what it kept, prompts already answered are "
                        "skipped, P's SFT continues from its step (not bit-identical to an unbroken run; nothing "
                        "kept or trained is lost or doubled). Rounds mode: complete rounds are skipped (a config "
                        "that changes what they produce is refused, naming the field). GRPO continues from its "
                        "checkpoint. Without it the run starts over in the same directory")
    parser.add_argument("--verbose", action="store_true",
                        help=f"print Ray's and Ray Train's own output here (default: runs/<name>/{RAY_LOG.as_posix()})")
    parser.set_defaults(handler=_run)
