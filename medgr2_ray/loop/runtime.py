"""Connecting to Ray the same way from `medgr2 run`, the job entrypoint and `medgr2 status`.

`ray.address` unset starts a local cluster in-process (the embedded default); set, it joins an existing
cluster (`ray job submit` sets RAY_ADDRESS, which Ray reads itself). Token authentication is Ray's
default and is never turned off here; usage statistics are. Heavy work never runs in this process:
the driver holds handles, the actors hold the models.
"""

from __future__ import annotations

import logging
import os

from medgr2_ray.config import Config

log = logging.getLogger(__name__)


def init_ray(cfg: Config) -> None:
    """`ray.init` for a run (idempotent: an already initialised session is reused)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if _names_hub_model(cfg) else "1")
    import ray

    if ray.is_initialized():
        return
    # Every worker: offline unless a hub model is named, quiet model loading, one tokenizer thread.
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "RAY_USAGE_STATS_ENABLED")}
    env.update({"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONWARNINGS": "ignore::DeprecationWarning"})
    kwargs: dict[str, object] = {"namespace": cfg.ray.namespace, "log_to_driver": True,
                                 "runtime_env": {"env_vars": env, "worker_process_setup_hook": quiet_worker_logs}}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return
    ray.init(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory,
             include_dashboard=False, **kwargs)


# Ray Train's per-report INFO line and its placement-group cleaner's "State API may be temporarily
# unavailable" warning (a busy 2-core machine answers state queries slowly; training is unaffected)
# arrive every few seconds and bury the stage progress a person reads.
_NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
_NOISY_FILES = ("ray/train/v2/_internal/execution/context.py",)  # this Ray module names its logger by file path


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of a run (`worker_process_setup_hook`): silences the two chatty
    Ray Train loggers above; errors still show."""
    import ray

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    root = os.path.dirname(os.path.dirname(ray.__file__))
    for relative in _NOISY_FILES:
        logging.getLogger(os.path.join(root, relative)).setLevel(logging.WARNING)


def _names_hub_model(cfg: Config) -> bool:
    """Whether any model path is a hub id rather than a local directory (then downloads are allowed)."""
    paths = [cfg.policy.path, cfg.generator.path, cfg.reward_model.path]
    return any(p is not None and not os.path.isdir(os.path.expanduser(p)) and "/" in p and not p.startswith((".", "/", "~"))
               for p in paths)
