"""The `medgr2` command line: one sub-module per command group, each with a `register` function.

Sub-modules import their heavy dependencies (Ray, torch, transformers) inside the command handlers,
so `medgr2 --help` and `medgr2 config show` stay fast. A command that fails prints one line per
problem (`errors.describe`: the thing, and what to do) and exits non-zero; `--debug`, before or after
the command's name, prints the traceback as well.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from medgr2_ray.cli import config_cmd, data_cmd, eval_cmd, models_cmd, run_cmd, status_cmd
from medgr2_ray.cli.errors import describe

_GROUPS = (run_cmd, config_cmd, data_cmd, eval_cmd, models_cmd, status_cmd)
_DEBUG_HELP = "on an error, print the full traceback too (default: one line saying what to fix)"


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (those without sub-commands of their own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for action in subs for child in dict.fromkeys(action.choices.values()) for leaf in _leaf_parsers(child)]


def command_name(args: argparse.Namespace) -> str:
    """`data ingest`, `eval score`, `run`: the command as typed, for the error line."""
    parts = [getattr(args, dest, None) for dest in ("command", "action", "eval_command")]
    return " ".join(p for p in parts if isinstance(p, str))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="medgr2",
        description="MedGR2 on Ray: co-evolve a medical data generator and reward model, train a solver.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    for leaf in _leaf_parsers(parser):  # `medgr2 run X --debug` works as well as `medgr2 --debug run X`
        if leaf is not parser:
            leaf.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `medgr2` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"medgr2 {command_name(args)}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure ends as one line a person can act on (errors.describe)
        if args.debug:
            traceback.print_exc()
        lines, status = describe(exc)
        for line in lines:
            print(f"medgr2 {command_name(args)}: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
