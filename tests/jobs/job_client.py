"""Waits for a submitted Ray job through `JobSubmissionClient`, in its own process, and prints one JSON
line `{"status": ..., "logs": ...}`.

Why a process of its own: Ray reads `RAY_AUTH_MODE` into its cached config when `ray` is first imported.
A test process that imported Ray earlier (any other test file, a `-k` subset, a session cluster) would
keep whatever mode it saw then, and the client would fail with "Token authentication is enabled but no
authentication token was found". Here the environment (the head's, token auth on) is set before Ray is
imported, whatever the test process did before.

    python job_client.py DASHBOARD_URL JOB_ID TIMEOUT_S
"""

from __future__ import annotations

import json
import sys
import time


def main(url: str, job_id: str, timeout_s: float) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2.0)
        status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    value = status.value if isinstance(status, JobStatus) else str(status)
    print(json.dumps({"status": value, "logs": client.get_job_logs(job_id)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
