"""Ray job entrypoint: the continuous asynchronous GRPO loop alone (no generator/reward rounds).

It trains the configured policy with GRPO on verifiable template questions (modality, anatomy) about the
configured image pool (`data.pool`, or the bundled seed pool), using the long-lived actors of
`actors/` and the loop of `loop/controller.py`, and prints one JSON summary line at the end. The full
MedGR² cycle has its own entrypoint (`jobs/medgr2_cycle.py`). Submit it to a running cluster with

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml \\
        -- python jobs/grpo_async.py configs/cpu-tiny.yaml --set grpo.steps=20

(with token auth on, the client needs `RAY_AUTH_MODE=token` and the cluster's token). A bad config
fails before any actor starts, with the message `medgr2 config show` would print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); defaults when omitted")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue from the run's GRPO checkpoint")
    args = parser.parse_args(argv)

    from medgr2_ray.config import ConfigError, dump_config, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:  # fail fast, before Ray or any model is touched
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2

    from medgr2_ray.data.seedpool import load_configured_pool
    from medgr2_ray.data.templates import make_template_samples
    from medgr2_ray.loop.grpo_stage import run_grpo
    from medgr2_ray.loop.runtime import init_ray
    from medgr2_ray.models.tiny import ensure_model_dir

    start = time.perf_counter()
    init_ray(cfg)
    run_dir = Path(cfg.run.root).expanduser() / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    policy_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, cfg.run.seed, "policy")
    reward_dir = ensure_model_dir(cfg.reward_model, cfg.data.cache_dir, cfg.run.seed, "reward") if cfg.reward.alpha > 0 else None
    pool = load_configured_pool(cfg.data.pool, cfg.data.cache_dir)
    samples = make_template_samples(pool.images, cfg.run.seed)

    def progress(stage: str, done: int, total: int) -> None:
        print(f"[{stage}] {done}/{total}", flush=True)

    final = run_grpo(cfg, policy_dir, reward_dir, samples, pool, run_dir, progress, resume=args.resume)
    print(json.dumps({"run_dir": str(run_dir), "policy": str(final), "steps": cfg.grpo.steps,
                      "samples": len(samples), "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
