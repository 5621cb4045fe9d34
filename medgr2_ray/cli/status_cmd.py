"""`medgr2 status`: placeholder until its owner fills it in (see the issue that delivers it)."""

from __future__ import annotations

import argparse


def _todo(args: argparse.Namespace) -> int:
    raise SystemExit("medgr2 status: not implemented yet")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `status` command group."""
    sub.add_parser("status", help="(not implemented yet)").set_defaults(handler=_todo)
