"""Wall time and peak memory of the main job, with every process it starts counted.

`/usr/bin/time -v` sees only the driver: Ray's GCS, raylet and worker processes are not waited-for
children, so their memory is invisible to it. This runs the command and samples the summed resident
memory (RSS) of the whole process tree twice a second; the peak of that sum is the number the README
quotes (an upper bound: shared pages, e.g. the object store and torch's libraries, count once per process).

    .venv/bin/python benchmarks/main_job_resources.py -- .venv/bin/medgr2 run configs/cpu-tiny.yaml
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def tree_rss(root: psutil.Process) -> int:
    """Summed RSS of a process and all its descendants (processes that vanish mid-scan are skipped)."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def gnu_time_fields(text: str) -> dict[str, str]:
    """Wall clock and maximum RSS from `/usr/bin/time -v` output: the driver and the children it waited
    for only (Ray's GCS, raylet and workers are not among them, hence the tree sampling above)."""
    wanted = ("Elapsed (wall clock) time", "Maximum resident set size", "Exit status")
    out = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if any(key.startswith(w) for w in wanted):
            out[key] = value
    return out


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    if not command:
        raise SystemExit("usage: main_job_resources.py -- COMMAND...")
    gnu_time = Path("/usr/bin/time")
    fd, name = tempfile.mkstemp(prefix="main_job_time_")
    os.close(fd)
    report = Path(name)
    # its numbers beside ours: what `/usr/bin/time -v` alone would say (the driver only)
    command_run = [str(gnu_time), "-v", "-o", name, *command] if gnu_time.is_file() else command
    start = time.perf_counter()
    proc = subprocess.Popen(command_run, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    root = psutil.Process(proc.pid)
    peak, samples = 0, 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(root))
            samples += 1
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    result = {"command": command, "exit_status": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
              "peak_tree_rss_gib": round(peak / 2**30, 2), "samples": samples,
              "gnu_time": gnu_time_fields(report.read_text()), "machine": machine()}
    report.unlink(missing_ok=True)
    out = Path(__file__).resolve().parent / "results" / "main_job_resources.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
