"""`medgr2 run CONFIG [--set k=v] [--resume]`: the MedGR² cycle end to end, with a progress bar per stage."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from medgr2_ray.cli.config_cmd import add_config_args
from medgr2_ray.config import load_config


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
    cfg = load_config(args.config, args.overrides)
    from medgr2_ray.loop.cycle import run_cycle
    from medgr2_ray.loop.runtime import init_ray

    init_ray(cfg)
    update, stop = _progress_printer()
    try:
        result = run_cycle(cfg, update, resume=args.resume)
    finally:
        stop()
    print(f"\nrun directory: {result.run_dir}  ({result.seconds:.0f} s)")
    for name, ev in result.evals.items():
        print(f"  {name:<10} held-out accuracy {ev.accuracy:6.1%} ({ev.correct}/{ev.total})  "
              f"image-blind bound {ev.blind_bound:.1%}")
    print(f"report: {result.report}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `run` command."""
    parser = sub.add_parser("run", help="run the MedGR2 cycle (rounds, solver SFT and GRPO, evaluation, report)")
    add_config_args(parser, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in runs/<name>: complete co-evolution rounds are skipped (a config "
                        "that changes what they produce is refused, naming the field), solver SFT and GRPO continue "
                        "from their checkpoints; without it the run starts over in the same directory")
    parser.set_defaults(handler=_run)
