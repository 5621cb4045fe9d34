"""What every long-lived actor reports about itself (`ready()`), and the per-process set-up they share:
its identity, its torch thread budget, and the busy spans it reports for the run's timeline."""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from medgr2_ray.messages import ActorInfo, Span


def actor_info(weight_version: int) -> ActorInfo:
    """This actor's `ActorInfo`; outside an actor (a plain instance in a test or the driver) an unnamed one."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return ActorInfo(name="", pid=os.getpid(), node_id="", weight_version=weight_version, restarted=False)
    ctx = ray.get_runtime_context()
    return ActorInfo(
        name=ctx.get_actor_name() or "",
        pid=os.getpid(),
        node_id=ctx.get_node_id(),
        weight_version=weight_version,
        restarted=bool(ctx.was_current_actor_reconstructed),
    )


def limit_threads(torch_threads: int) -> None:
    """One torch thread pool size per actor process: several actors share the node's cores."""
    import torch

    torch.set_num_threads(torch_threads)


def record_span(monitor: Any, actor: str, kind: str, started: float) -> None:
    """Tell the run's monitor that `actor` was busy with `kind` from `started` until now (fire and forget:
    the timeline must never slow the work down, and a lost span only leaves a gap in a plot)."""
    if monitor is not None:
        monitor.spans.remote([Span(actor, kind, started, time.time())])
