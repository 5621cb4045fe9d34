"""Connecting to Ray the same way from `medgr2 run`, the job entrypoint and `medgr2 status`.

`ray.address` unset starts a local cluster in-process (the embedded default), with the Ray dashboard on
127.0.0.1; set, it joins an existing cluster (`ray job submit` sets RAY_ADDRESS, which Ray reads itself).
An address where nothing listens is refused at once (`check_reachable`): `ray.init` would retry for
minutes. Token authentication is Ray's default and is never turned off here; usage statistics are.
Heavy work never runs in this process: the driver holds handles, the actors hold the models.

With a `log_file` (what `medgr2 run` passes unless `--verbose`), Ray's own driver messages (the
token-auth notice, "Started a local Ray instance", Ray Train's) and every actor's and Ray Train
worker's output, the raylet's messages and what Ray's C++ core writes to this process's stderr go to that
file instead of the terminal, so the terminal holds our progress bars, warnings and the summary.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, TextIO

from medgr2_ray.config import Config

log = logging.getLogger(__name__)


# Ray's log monitor (one per node) looks for new log files in a loop that sleeps 0.1 s when nothing was
# written: below this many files it globs the log directory on every turn. Every actor, Ray Train helper and
# worker that ever ran on the node leaves files there, so on a small machine a long run's monitor grew to
# 14-17 ms of CPU per 0.5 s GRPO step (benchmarks/results/orchestration_overhead.md's CPU table; 0-3 ms
# with this setting). 0: it globs at most every 0.5 s (Ray's LOG_NAME_UPDATE_INTERVAL_S); a new actor's
# first lines reach the driver's log up to that much later; nothing is lost, files are read from their start.
#
# Ray Train starts a PreemptionWatcher actor per run that polls the nodes' drain state (a cloud provider
# reclaiming a spot node). Nothing drains a cluster started on this machine, and every idle Ray worker costs
# CPU here: its core worker wakes 100 times a second to check for signals (Ray's fixed 10 ms), 7.5-9.5 ms of
# CPU per second on the 2-core reference machine (the idle-actor table in benchmarks/results/orchestration_overhead.md).
LOCAL_CLUSTER_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


# glibc's malloc in the worker processes. A training step allocates and frees its activations and gradients
# (tens of MB on the tiny models) every step; by default glibc hands much of that back to the kernel
# (trimming the heap, unmapping large chunks) and the next step faults it in again, page by page. A Ray
# Train learner runs in a thread of its worker, whose arena's heaps are 64 MB at most, so it churns the
# most: 18-27k minor page faults and 32-44 ms of system time per GRPO step (~15% of the step) on the 2-core
# machine, against 12-17k in the main thread of a plain process; with these settings 0-1, and the learner's
# `grpo_step` 220-233 -> 188 ms (timed inside the worker; orchestration_overhead.md's train hop went from
# 229 ms, 15% above the one-process step's, to 177 ms, level with it). One arena (threads share the
# main heap, which has no such bound), chunks up to 32 MiB (glibc's most) from the heap, and up to 1 GiB of
# freed memory kept at its top for the next step: a process's memory stays near its peak, which a
# training step reaches again anyway. Applied to every worker; an environment that sets a key itself wins.
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                     "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def worker_malloc_env() -> dict[str, str]:
    """`WORKER_MALLOC_ENV` less the keys this process's environment sets (the user's value wins, and Ray
    refuses a key that both a submitted job's runtime env and its driver's `ray.init` set)."""
    return {k: v for k, v in WORKER_MALLOC_ENV.items() if k not in os.environ}


def keep_freed_memory() -> bool:
    """`WORKER_MALLOC_ENV`'s two thresholds for this process, now (`mallopt`; the arena count is read only
    when a process starts, and one thread's own heap is not bounded). For work run in a process's main
    thread, e.g. a benchmark's one-process baseline. False where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(WORKER_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, int(WORKER_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"])))


def lean_local_cluster() -> None:
    """Settings for a Ray cluster this process is about to start (read by Ray's processes at start; a
    cluster that already runs keeps its own). The user's environment wins."""
    for key, value in LOCAL_CLUSTER_ENV.items():
        os.environ.setdefault(key, value)


class RayUnreachableError(ConnectionError):
    """Nothing answers at the Ray address a command was given."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise `RayUnreachableError` when nothing listens at a `[scheme://]host:port` address (`auto` and
    other forms are left to Ray, which fails fast on them)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayUnreachableError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with `ray start --head` "
            "or correct the address (ray.address, --address or RAY_ADDRESS)") from None


def init_ray(cfg: Config, log_file: Path | None = None) -> str | None:
    """`ray.init` for a run (idempotent: an already initialised session is reused); returns the Ray
    dashboard's URL when there is one. `log_file`: where Ray's output goes instead of the terminal."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if _names_hub_model(cfg) else "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Writing model shards" bars (transformers' save)
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)  # ray.init would retry a dead address for minutes
    if ray.is_initialized():
        return _dashboard_url(None)
    kwargs: dict[str, Any] = {"namespace": cfg.ray.namespace, "log_to_driver": True,
                              "runtime_env": {"env_vars": worker_env(), "worker_process_setup_hook": quiet_worker_logs}}
    sink = _driver_logs_to(log_file) if log_file is not None else None
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        lean_local_cluster()
        context = ray.init(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory,
                           include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
    if sink is not None:
        _worker_logs_to(sink)
        _native_logs_to(sink)
    return _dashboard_url(context)


def worker_env() -> dict[str, str]:
    """Every worker's environment (`init_ray` sets HF_HUB_OFFLINE and RAY_USAGE_STATS_ENABLED here first):
    offline unless a hub model is named, quiet model loading, one tokenizer thread, `worker_malloc_env`."""
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "RAY_USAGE_STATS_ENABLED")}
    env.update({"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONWARNINGS": "ignore::DeprecationWarning", **worker_malloc_env()})
    return env


def _dashboard_url(context: Any) -> str | None:
    url = getattr(context, "dashboard_url", None) if context is not None else None
    if not url:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    return (url if "://" in url else f"http://{url}") if url else None


def _driver_logs_to(log_file: Path) -> TextIO:
    """Send the driver's `ray` loggers (Ray, Ray Train, Ray Data) to `log_file` only; returns the open
    file for the worker output as well."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handle = log_file.open("a", encoding="utf-8")
    handler = logging.StreamHandler(handle)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    for old in list(ray_logger.handlers):
        ray_logger.removeHandler(old)
    ray_logger.addHandler(handler)
    ray_logger.propagate = False
    return handle


def _worker_logs_to(handle: TextIO) -> None:
    """Route what Ray streams from workers to the driver (actor stdout/stderr, Ray Train's controller and
    workers) into `handle` instead of the terminal. Ray has no public switch for this: the stream
    dispatcher is internal, so if it moves, workers' output stays in Ray's session logs (as with
    `log_to_driver=False`) and a note in the file says where."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        handle.write("worker output: in Ray's session logs (/tmp/ray/session_latest/logs)\n")
        return
    lock = threading.Lock()

    def write(batch: dict[str, Any]) -> None:
        who = batch.get("actor_name") or batch.get("task_name") or "worker"
        text = "".join(f"({who} pid={batch.get('pid')}) {line}\n" for line in batch.get("lines", []))
        with lock:
            handle.write(text)
            handle.flush()

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("medgr2_run_log", write)


def _native_logs_to(handle: TextIO) -> None:
    """Route the rest of Ray's own output into `handle`: what its C++ core writes to this process's
    stderr (file descriptor 2; e.g. its warning that restartable actors have constructor arguments in the
    object store, which ours pin for their lifetime) and the raylet's messages to the driver ("N PYTHON
    worker processes have been started"). Python's own `sys.stderr` (our warnings, one-line errors) keeps
    the terminal. The raylet messages go through an internal Ray function; if it moves, they print."""
    import sys

    import ray._private.worker as ray_worker

    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stderr.flush()
    os.dup2(handle.fileno(), 2)
    sys.stderr = terminal
    lock = threading.Lock()

    def write(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        with lock:
            handle.write("".join(f"({data.get('pid')}) {line}\n" for line in data.get("lines", [])))
            handle.flush()

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = write


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
