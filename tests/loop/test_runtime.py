"""The worker setup hook silences exactly the chatty Ray Train loggers the run would print from, by the
names those Ray modules really use (a Ray upgrade that renames them fails here, not silently); the same
for the local-cluster settings Ray's own processes read."""

from __future__ import annotations

import inspect
import logging
import os

import pytest

from medgr2_ray.loop.runtime import LOCAL_CLUSTER_ENV, lean_local_cluster, quiet_worker_logs


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
