"""`medgr2 models`: build the offline tiny models.

    medgr2 models build-tiny [CONFIG] [--set k=v]             policy/generator/reward tiny models into
                                                              the cache (data.cache_dir), shared when equal
    medgr2 models build-tiny [CONFIG] --out DIR [--role R]    one tiny model (default: policy) into DIR

Models whose config sets `path` are real checkpoints and are not built. The seed is `run.seed`, the same
seed every actor passes to `ensure_model_dir`, so the CLI pre-builds exactly what a run will load.
"""

from __future__ import annotations

import argparse

from medgr2_ray.cli.config_cmd import add_config_args
from medgr2_ray.config import load_config

_ROLE_SECTIONS = {"policy": "policy", "generator": "generator", "reward": "reward_model"}


def _build_tiny(args: argparse.Namespace) -> int:
    from medgr2_ray.models.tiny import build_tiny_vlm, ensure_model_dir

    config = load_config(args.config, args.overrides)
    seed = config.run.seed
    if args.out:
        model = getattr(config, _ROLE_SECTIONS[args.role])
        path = build_tiny_vlm(model.tiny, args.out, seed)
        print(f"{args.role}: tiny Qwen2-VL (seed {seed}) written to {path}")
        return 0
    for role, section in _ROLE_SECTIONS.items():
        model = getattr(config, section)
        path = ensure_model_dir(model, config.data.cache_dir, seed, role)
        kind = "checkpoint (not built)" if model.path else "tiny model"
        print(f"{role:<10} {kind}: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` command group."""
    group = sub.add_parser("models", help="build offline tiny models").add_subparsers(dest="action", required=True)
    build = group.add_parser("build-tiny", help="build the tiny Qwen2-VL models (offline, a few seconds)")
    add_config_args(build)
    build.add_argument("--out", default=None, help="write one model into this directory instead of the cache")
    build.add_argument("--role", choices=sorted(_ROLE_SECTIONS), default="policy",
                       help="which model's tiny config to use with --out (default: policy)")
    build.set_defaults(handler=_build_tiny)
