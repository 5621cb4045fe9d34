"""What every long-lived actor reports about itself (`ready()`), and the per-process set-up they share:
its identity, its torch thread budget, and the busy spans it reports for the run's timeline.

Spans are batched: a process sends the spans it recorded in one call to the monitor at most every
`SPAN_FLUSH_S` seconds, and whenever its `ready()` is asked (`flush_spans`). A message per span cost the
sender and the monitor about a millisecond of CPU each, several times per GRPO step, on cores the work
needs (benchmarks/orchestration_overhead.py counts every process's CPU per step)."""

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


SPAN_FLUSH_S = 1.0
_pending: list[tuple[Any, Span]] = []  # (monitor, span) recorded in this process and not yet sent
_last_flush = 0.0


def record_span(monitor: Any, actor: str, kind: str, started: float) -> None:
    """Tell the run's monitor that `actor` was busy with `kind` from `started` until now (fire and forget,
    batched: the timeline must never slow the work down, and a lost span only leaves a gap in a plot)."""
    if monitor is None:
        return
    _pending.append((monitor, Span(actor, kind, started, time.time())))
    if time.time() - _last_flush >= SPAN_FLUSH_S:
        flush_spans()


def flush_spans() -> None:
    """Send every span recorded in this process and not yet sent (one call per monitor)."""
    global _pending, _last_flush
    batches: dict[int, tuple[Any, list[Span]]] = {}
    for monitor, span in _pending:
        batches.setdefault(id(monitor), (monitor, []))[1].append(span)
    _pending, _last_flush = [], time.time()
    for monitor, spans in batches.values():
        monitor.spans.remote(spans)
