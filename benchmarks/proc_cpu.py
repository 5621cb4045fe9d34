"""CPU seconds of every process of this run's local Ray cluster (the driver, Ray's own processes, every
actor and worker), so a benchmark can say where the CPU went, process by process, not only where the
wall time went. On 2 cores a process that is busy while the work runs takes its time from the work.

Processes are this driver, Ray's head processes (GCS, raylet, agents: their command lines name this
session's directory) and the raylet's children (actors and workers, named `ray::<Class>`). Linux
counts CPU time in ticks of 10 ms, so measure windows of several seconds.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


def ray_processes() -> list[Any]:
    """psutil handles on this session's processes (call after `ray.init`)."""
    import psutil
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    head = [p for p in psutil.process_iter(["cmdline"]) if session in " ".join(p.info["cmdline"] or [])]
    raylets = [p for p in head if "raylet" in " ".join(p.info["cmdline"] or [])]
    kids = [c for r in raylets for c in r.children(recursive=True)]
    return list({p.pid: p for p in [psutil.Process(os.getpid()), *head, *kids]}.values())


def _name(proc: Any) -> str:
    try:
        cmd = proc.cmdline()
    except Exception:  # gone
        return "?"
    if proc.pid == os.getpid():
        return "driver (this process)"
    if cmd and cmd[0].startswith("ray::"):  # "ray::<actor name>:<Class>.<method>" or "ray::<Class>"
        return cmd[0][5:].split(":")[-1].split(".")[0]
    for known in ("gcs_server", "raylet", "dashboard/agent.py", "runtime_env/agent", "log_monitor", "dashboard.py"):
        if any(known in part for part in cmd):
            return f"Ray: {known.split('/')[0]}"
    return "Ray: other"


def cpu_seconds(procs: list[Any]) -> dict[int, tuple[str, float]]:
    """pid -> (name, user + system CPU seconds so far), for the processes still alive."""
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = (_name(proc), times.user + times.system)
        except Exception:  # the process ended
            continue
    return out


def per_name(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two `cpu_seconds` snapshots, summed by process name."""
    out: dict[str, float] = defaultdict(float)
    for pid, (name, end) in after.items():
        out[name] += end - before.get(pid, (name, end))[1]
    return dict(out)


def wait_quiet(threshold_cores: float = 0.15, window_s: float = 1.0, timeout_s: float = 90.0) -> float:
    """Wait until this Ray cluster's processes together use less than `threshold_cores` of a core over two
    windows in a row (or `timeout_s` passed); returns the seconds waited. Building an actor system starts a
    dozen processes that import torch and Ray's libraries for several CPU-seconds each, while the last
    system's processes exit: measured steps must not share the cores with that."""
    import time

    start = time.perf_counter()
    quiet = 0
    while quiet < 2 and time.perf_counter() - start < timeout_s:
        procs = ray_processes()
        before = cpu_seconds(procs)
        time.sleep(window_s)
        used = sum(per_name(before, cpu_seconds(procs)).values())
        quiet = quiet + 1 if used < threshold_cores * window_s else 0
    return time.perf_counter() - start


def report_cpu(report: Any, cpu_s: dict[str, list[dict[str, float]]], steps: dict[str, list[int]]) -> None:
    """A table of CPU ms per step by process for each column (runs' `per_name` over their timed steps,
    median over runs); the rows beyond the rollout actor and the learner are what orchestration and Ray
    itself cost in CPU."""
    import statistics

    per_step = {col: {n: statistics.median([1000 * c.get(n, 0.0) / k for c, k in zip(runs, steps[col])])
                      for n in {n for c in runs for n in c}} for col, runs in cpu_s.items() if runs}
    order = sorted({n for d in per_step.values() for n in d}, key=lambda n: -max(d.get(n, 0.0) for d in per_step.values()))
    rows = [[n, *(f"{per_step[c].get(n, 0.0):.1f}" for c in per_step)] for n in order]
    rows.append(["all processes", *(f"{sum(per_step[c].values()):.1f}" for c in per_step)])
    report.table("CPU ms per step by process of the Ray cluster, over the timed steps (median over repetitions; "
                 "Linux counts 10 ms ticks, so small rows are coarse)", ["process", *per_step], rows)
    report.data["cpu_ms_per_step"] = per_step


IDLE_ACTORS, IDLE_SECONDS = 4, 10.0


def idle_actor_cpu(actors: int = IDLE_ACTORS, seconds: float = IDLE_SECONDS) -> list[float]:
    """ms of CPU per second that each of `actors` idle Ray actors (no calls) spends over `seconds` (call
    after `ray.init`). Every Ray worker pays it whether it works or not: its core worker wakes every 10 ms
    to check for signals (a fixed interval in Ray's C++ core), so on a small machine a cluster's helper
    processes cost CPU in proportion to their number, not to what they do."""
    import time

    import psutil
    import ray

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    handles = [Idle.remote() for _ in range(actors)]
    try:
        procs = [psutil.Process(pid) for pid in ray.get([h.pid.remote() for h in handles])]
        time.sleep(2.0)  # past the start-up's imports
        before = [sum(p.cpu_times()[:2]) for p in procs]
        start = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - start
        return [1000 * (sum(p.cpu_times()[:2]) - b) / wall for p, b in zip(procs, before)]
    finally:
        for h in handles:
            ray.kill(h)


def report_idle(report: Any, per_s: list[float]) -> None:
    """The idle actor's CPU as a table (and in the report's data)."""
    import statistics

    report.table(f"An idle Ray actor on this machine: ms of CPU per second ({len(per_s)} actors with no calls, "
                 f"{IDLE_SECONDS:g} s; Ray's core worker wakes every 10 ms to check for signals)",
                 ["actors", "ms CPU per s, each"],
                 [[str(len(per_s)), f"{statistics.median(per_s):.1f} [{min(per_s):.1f}-{max(per_s):.1f}]"]])
    report.data["idle_actor_ms_per_s"] = per_s


WORK_PROCESSES = ("RolloutActor", "RayTrainWorker")  # the GRPO loop's two stages; every other process is overhead


def waiting_workers(cpu_ms: dict[str, float]) -> list[str]:
    """The rows of a `report_cpu` column that are Ray workers waiting for calls, as an idle actor does
    (actors, Ray Train's helpers, idle workers). Left out: the two stages' processes, Ray's daemons
    ("Ray: ..."), its two agents (not task-executing workers), the driver, and a learner's `<name>-fit` task
    (its worker's main thread runs the task, so it does not check for signals every 10 ms)."""
    return [n for n in cpu_ms if not n.startswith("Ray: ") and not n.endswith("-fit")
            and n not in (*WORK_PROCESSES, "driver (this process)", "DashboardAgent", "RuntimeEnvAgent")]


@dataclass(frozen=True)
class IdleCost:
    """What a cluster's waiting workers cost in CPU by their mere presence."""

    workers: int  # at least this many (the CPU table groups processes by name)
    ms_per_s: float  # each, idle (median of `idle_actor_cpu`)

    def ms_per_step(self, step_s: float) -> float:
        return self.workers * self.ms_per_s * step_s


def idle_cost(data: dict[str, Any], column: str) -> IdleCost | None:
    """From a page's data: `column`'s waiting workers and the idle actor's CPU (None where the page
    predates the idle actor's measurement)."""
    import statistics

    per_s = data.get("idle_actor_ms_per_s")
    if not per_s:
        return None
    return IdleCost(len(waiting_workers(data["cpu_ms_per_step"][column])), statistics.median(per_s))


class MachineCPU:
    """The whole machine's CPU use over time (/proc/stat, sampled by a thread every `every_s`): a benchmark
    that runs alone can ask which share of all cores was busy between two wall-clock moments."""

    def __init__(self, every_s: float = 0.5) -> None:
        import threading

        self.samples: list[tuple[float, float, float]] = []  # (time.time(), busy ticks, all ticks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    @staticmethod
    def _ticks() -> tuple[float, float]:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _run(self, every_s: float) -> None:
        import time

        while not self._stop.is_set():
            self.samples.append((time.time(), *self._ticks()))
            self._stop.wait(every_s)

    def __enter__(self) -> "MachineCPU":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy_share(self, start: float, end: float) -> float:
        """Share of all cores' time that was busy between `start` and `end` (the nearest samples)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        (_, b0, a0), (_, b1, a1) = inside[0], inside[-1]
        return (b1 - b0) / (a1 - a0) if a1 > a0 else float("nan")
