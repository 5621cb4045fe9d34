"""The worker setup hook silences exactly the chatty Ray Train loggers the run would print from, by the
names those Ray modules really use (a Ray upgrade that renames them fails here, not silently); the same
for the local-cluster settings Ray's own processes read. The workers' malloc settings stop the page-fault
churn of a step's allocations, in a thread (as a Ray Train learner runs) and in a main thread."""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys

import pytest

from medgr2_ray.loop.runtime import (LOCAL_CLUSTER_ENV, WORKER_MALLOC_ENV, lean_local_cluster, quiet_worker_logs,
                                     worker_env, worker_malloc_env)

# A training step's allocation pattern in small: ~80 MB of arrays of several sizes, made and freed 10 times
# (more than one 64 MB thread heap, as a learner step); prints the calling thread's minor page faults.
CHURN = """
import resource, sys, threading
import numpy as np
if sys.argv[2] == "keep":
    from medgr2_ray.loop.runtime import keep_freed_memory
    assert keep_freed_memory()
def step():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(10):
        arrays = [np.ones(n, np.float32) for n in (5_000_000, 3_000_000, 5_000_000, 2_000_000, 5_000_000)]
        del arrays
    print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
if sys.argv[1] == "thread":
    t = threading.Thread(target=step); t.start(); t.join()
else:
    step()
"""


def test_quiet_worker_logs_reaches_ray_trains_own_loggers() -> None:
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    quiet_worker_logs()
    assert context.logger.getEffectiveLevel() == logging.WARNING  # its per-report INFO line is gone
    assert placement_group_cleaner.logger.getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("medgr2_ray").getEffectiveLevel() <= logging.WARNING  # ours untouched


def test_lean_local_cluster_sets_what_ray_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import log_monitor
    from ray.train.v2._internal import constants as train_constants
    from ray.train.v2._internal.execution.controller import controller

    assert 'os.getenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"' in inspect.getsource(log_monitor)
    # Ray Train's controller reads the watcher's switch, and the driver passes it on to the controller
    assert train_constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR == "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    assert "ENABLE_PREEMPTION_WATCHER_ENV_VAR" in inspect.getsource(controller)
    assert train_constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR in train_constants.ENV_VARS_TO_PROPAGATE
    assert set(LOCAL_CLUSTER_ENV) == {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"}
    for key in LOCAL_CLUSTER_ENV:
        monkeypatch.delenv(key, raising=False)
    lean_local_cluster()
    assert all(os.environ[k] == v for k, v in LOCAL_CLUSTER_ENV.items())
    monkeypatch.setenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "7")  # the user's own setting wins
    lean_local_cluster()
    assert os.environ["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"] == "7"


def _faults(where: str, env: dict[str, str], keep: bool = False) -> int:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHURN, where, "keep" if keep else "-"], env={**base, **env},
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_the_workers_malloc_settings_stop_the_page_fault_churn() -> None:
    """In a thread, as a Ray Train learner runs: glibc's defaults fault every step's memory in again
    (~24k faults here); `WORKER_MALLOC_ENV` keeps it after the first step. In a main thread (a benchmark's
    one-process side) `keep_freed_memory` does the same for a running process."""
    default, tuned = _faults("thread", {}), _faults("thread", WORKER_MALLOC_ENV)
    assert tuned * 4 < default, (tuned, default)
    default, kept = _faults("main", {}), _faults("main", {}, keep=True)
    assert kept * 4 < default, (kept, default)


def test_every_worker_gets_the_malloc_settings_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    for key in WORKER_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    assert WORKER_MALLOC_ENV.items() <= worker_env().items()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # e.g. from a job's runtime env: Ray refuses it set twice
    assert "MALLOC_ARENA_MAX" not in worker_malloc_env() and "MALLOC_ARENA_MAX" not in worker_env()
    assert set(worker_malloc_env()) == set(WORKER_MALLOC_ENV) - {"MALLOC_ARENA_MAX"}


def test_a_worker_of_the_cluster_runs_with_them(ray_cluster: None) -> None:
    """The env vars a cluster is started with reach its workers' processes (read by glibc at their start)."""
    import ray

    @ray.remote(num_cpus=0)
    def environment() -> dict[str, str]:
        return {k: os.environ.get(k, "") for k in WORKER_MALLOC_ENV}

    assert ray.get(environment.remote()) == WORKER_MALLOC_ENV
