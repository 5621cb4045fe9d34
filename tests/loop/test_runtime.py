"""The worker setup hook silences exactly the chatty Ray Train loggers the run would print from, by the
names those Ray modules really use (a Ray upgrade that renames them fails here, not silently)."""

from __future__ import annotations

import logging

from medgr2_ray.loop.runtime import quiet_worker_logs


def test_quiet_worker_logs_reaches_ray_trains_own_loggers() -> None:
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    quiet_worker_logs()
    assert context.logger.getEffectiveLevel() == logging.WARNING  # its per-report INFO line is gone
    assert placement_group_cleaner.logger.getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("medgr2_ray").getEffectiveLevel() <= logging.WARNING  # ours untouched
