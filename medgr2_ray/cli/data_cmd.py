"""`medgr2 data`: placeholder until its owner fills it in (see the issue that delivers it)."""

from __future__ import annotations

import argparse


def _todo(args: argparse.Namespace) -> int:
    raise SystemExit("medgr2 data: not implemented yet")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    sub.add_parser("data", help="(not implemented yet)").set_defaults(handler=_todo)
