"""The `medgr2` command line: one sub-module per command group, each with a `register` function.

Sub-modules import their heavy dependencies (Ray, torch, transformers) inside the command handlers,
so `medgr2 --help` and `medgr2 config show` stay fast.
"""

from __future__ import annotations

import argparse
import sys

from medgr2_ray.cli import config_cmd, data_cmd, eval_cmd, models_cmd, run_cmd, status_cmd
from medgr2_ray.config import ConfigError

_GROUPS = (run_cmd, config_cmd, data_cmd, eval_cmd, models_cmd, status_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="medgr2",
        description="MedGR2 on Ray: co-evolve a medical data generator and reward model, train a solver.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `medgr2` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
