"""`medgr2 eval`: placeholder until its owner fills it in (see the issue that delivers it)."""

from __future__ import annotations

import argparse


def _todo(args: argparse.Namespace) -> int:
    raise SystemExit("medgr2 eval: not implemented yet")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` command group."""
    sub.add_parser("eval", help="(not implemented yet)").set_defaults(handler=_todo)
