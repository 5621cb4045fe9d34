"""`medgr2 status [--address ADDR] [--namespace NS] [--prefix P]`: the live state of a running loop.

Connects to the cluster, finds the run's `LoopMonitor` actor by name and prints what the controller last
pushed: step, weight version, buffer depth, groups trained/dropped/re-issued, reward, throughput, and
each actor pool with its members' weight versions.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def read_status(namespace: str, prefix: str = "", timeout_s: float = 30.0) -> Any:
    """The newest status of the run whose actors carry `prefix`, or None when none runs."""
    import ray

    from medgr2_ray.actors.monitor import MONITOR_NAME

    try:
        monitor = ray.get_actor(f"{prefix}{MONITOR_NAME}", namespace=namespace)
    except ValueError:
        return None
    return ray.get(monitor.get.remote(), timeout=timeout_s)


def format_status(status: Any) -> str:
    """A `FlywheelStatus` (the whole cycle) or a `LoopStatus` (a GRPO loop) as a few aligned lines."""
    from medgr2_ray.messages import FlywheelStatus

    if isinstance(status, FlywheelStatus):
        return _format_flywheel(status)
    return _format_loop(status)


def _format_pools(pools: Any) -> list[str]:
    lines = []
    for pool in pools:
        versions = ",".join(str(v) for v in pool.weight_versions) or "-"
        lines.append(f"  pool {pool.name:<24} {pool.ready}/{pool.members} ready, {pool.in_flight} calls, versions {versions}")
    return lines


def _format_flywheel(status: Any) -> str:
    lines = [f"run {status.run}: phase {status.phase}, {status.seconds:.0f} s"]
    if status.data is not None:
        d = status.data
        lines.append(f"  data: {d.candidates} candidates, {d.kept} kept ({d.candidates_per_s:.2f}/s, "
                     f"{d.kept_per_s:.2f} kept/s), {d.requests_in_flight} requests in flight, "
                     f"{d.requests_reissued} re-issued")
    for learner in status.learners:
        idle = f", idle {learner.idle_s:.0f} s" if learner.idle_s >= 1 else ""
        lines.append(f"  learner {learner.name:<21} version {learner.version}, {learner.steps_done}/"
                     f"{learner.steps_submitted} steps{idle}")
    lines += _format_pools(status.pools)
    if status.grpo is not None:
        lines += ["  " + line for line in _format_loop(status.grpo).splitlines()]
    return "\n".join(lines)


def _format_loop(status: Any) -> str:
    lines = [
        f"run {status.run}: step {status.step}/{status.steps}, weight version {status.version}, "
        f"{status.seconds:.0f} s",
        f"  buffer {status.buffer_depth}/{status.buffer_capacity} groups, {status.in_flight_groups} in flight",
        f"  trained {status.groups_trained} groups, dropped stale {status.groups_dropped_stale}, "
        f"re-issued {status.requests_reissued}",
        f"  reward mean {status.reward_mean:.3f}, {status.samples_per_s:.1f} samples/s trained",
    ]
    return "\n".join(lines + _format_pools(status.pools))


def _status(args: argparse.Namespace) -> int:
    import ray

    from medgr2_ray.loop.runtime import check_reachable

    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    check_reachable(address)  # ray.init would retry a dead address for minutes
    if not ray.is_initialized():
        ray.init(address=address, namespace=args.namespace, log_to_driver=False)
    status = read_status(args.namespace, args.prefix)
    if status is None:
        print(f"no medgr2 loop is reporting in namespace '{args.namespace}' (prefix '{args.prefix}'); "
              "is a run active? (the monitor appears when its actors start)")
        return 1
    print(format_status(status))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `status` command."""
    parser = sub.add_parser("status", help="print the live state of a running loop")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else the local cluster)")
    parser.add_argument("--namespace", default="medgr2", help="the run's Ray namespace (config ray.namespace)")
    parser.add_argument("--prefix", default="", help="actor-name prefix of the run (empty for `medgr2 run`)")
    parser.set_defaults(handler=_status)
