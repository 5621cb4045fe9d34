"""A real Ray head on loopback with its own ports and temp dir, stopped without touching anyone else's Ray.

`ray stop --force` (what `AutoscalingCluster.start/shutdown` call) kills every Ray process on the machine,
including other people's test clusters. `LocalHead.stop` instead ends only the processes whose command
line names this head's private temp dir or GCS address: the head's own daemons, its workers, and the
fake worker nodes its autoscaler starts (they inherit the head's temp dir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAY = str(Path(sys.executable).with_name("ray"))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now, never one this process handed out before: the OS can
    return the same ephemeral port to two binds in a row, and Ray refuses two components on one port."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _descendants_of_self() -> set[int]:
    """This process and its ancestors, which must never be signalled."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        pid = int(stat[1])
    return pids


@dataclass
class LocalHead:
    """One private Ray head (see the module docstring)."""

    num_cpus: int = 1
    dashboard: bool = False
    autoscaling_config: dict[str, Any] | None = None
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="medgr2-head-")))

    @property
    def address(self) -> str:
        """GCS address for `ray.init(address=...)`."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Job-submission address (the dashboard, bound to loopback)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment for clients of this head: token auth on, no usage stats."""
        # This venv's executables first (as after `source .venv/bin/activate`): job entrypoints run `python`.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self) -> None:
        """`ray start --head` on 127.0.0.1 with private ports; raises with Ray's output on failure."""
        cmd = [
            RAY, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--include-dashboard={'true' if self.dashboard else 'false'}",
        ]
        if self.dashboard:
            cmd += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        env = self.env()
        if self.autoscaling_config is not None:
            path = self.temp_dir / "autoscaling.json"
            path.write_text(json.dumps(self.autoscaling_config))
            cmd.append(f"--autoscaling-config={path}")
            env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def my_pids(self) -> list[int]:
        """Processes started for this head: their command line names its temp dir or GCS address."""
        # the client server names the GCS by the node's public IP, others by 127.0.0.1: match any host
        gcs = re.compile(rb"\d+\.\d+\.\d+\.\d+:%d(?!\d)" % self.port)
        spared, found = _descendants_of_self(), []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in spared:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile
            if str(self.temp_dir).encode() in cmdline or gcs.search(cmdline):
                found.append(int(entry.name))
        return found

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM this head's processes, then SIGKILL what is left after `grace_s`."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.my_pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while self.my_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.my_pids():
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
