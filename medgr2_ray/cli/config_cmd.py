"""`medgr2 config show [CONFIG] [--set k=v ...]`: print the resolved configuration."""

from __future__ import annotations

import argparse

from medgr2_ray.config import dump_config, load_config


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The CONFIG positional and repeatable `--set key=value` overrides, shared by commands."""
    parser.add_argument("config", nargs=None if required else "?", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="dotted override, e.g. --set learner.lr=1e-5 (repeatable)",
    )


def _show(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `config` command group."""
    group = sub.add_parser("config", help="inspect configuration").add_subparsers(dest="action", required=True)
    show = group.add_parser("show", help="print the resolved config as YAML")
    add_config_args(show)
    show.set_defaults(handler=_show)
