"""`ray job submit` against a real head on loopback (own ports and temp dir, token auth on): a short
asynchronous GRPO job succeeds and its logs say what it did; a job with a bad config fails fast with a
readable message. Only this head's processes are stopped afterwards.

The job client runs in its own process with the head's environment (`job_client.py`): this test
process may have imported Ray before (another test file, a `-k` subset), and Ray reads its auth mode
once, at import, so setting `RAY_AUTH_MODE` here would come too late."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_head import RAY, LocalHead  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def head() -> Iterator[LocalHead]:
    head = LocalHead(num_cpus=4, dashboard=True)
    head.start()
    try:
        yield head
    finally:
        head.stop()
    assert not head.my_pids()


def ray_cli(head: LocalHead, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RAY, *args], cwd=REPO, env=head.env(), capture_output=True, text=True, timeout=timeout)


def submit_and_wait(head: LocalHead, job_id: str, job_args: list[str], timeout_s: float = 600) -> tuple[str, str]:
    """Submit `python jobs/grpo_async.py ARGS` with the CLI and the example runtime env, wait for a
    terminal state through the typed client (in its own process, see the module docstring); return
    (status, logs)."""
    done = ray_cli(head, "job", "submit", f"--address={head.dashboard_url}", f"--submission-id={job_id}",
                   "--runtime-env=jobs/runtime_env.yaml", "--no-wait", "--", "python", "jobs/grpo_async.py", *job_args)
    assert done.returncode == 0, done.stderr
    waited = subprocess.run([sys.executable, str(HERE / "job_client.py"), head.dashboard_url, job_id, str(timeout_s)],
                            cwd=REPO, env=head.env(), capture_output=True, text=True, timeout=timeout_s + 120)
    assert waited.returncode == 0, waited.stderr[-4000:]
    answer = json.loads(waited.stdout.strip().splitlines()[-1])
    return answer["status"], answer["logs"]


def test_grpo_job_succeeds_and_reports(head: LocalHead, tmp_path: Path) -> None:
    args = [
        "configs/cpu-tiny.yaml", "--set", "reward.alpha=0", "--set", "grpo.steps=2", "--set", "grpo.prompts_per_step=2",
        "--set", "grpo.group_size=2", "--set", "grpo.max_new_tokens=2", "--set", "grpo.dynamic_sampling=false",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"run.root={tmp_path / 'runs'}",
        "--set", "run.name=job", "--set", "loop.poll_s=0.2",
    ]
    status, logs = submit_and_wait(head, "medgr2-grpo-ok", args)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads(next(line for line in logs.splitlines() if line.startswith('{"run_dir"')))
    assert summary["steps"] == 2 and summary["samples"] > 0
    assert "[GRPO] 2/2" in logs
    records = [json.loads(line) for line in (tmp_path / "runs" / "job" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert (Path(summary["policy"]) / "config.json").is_file()


def test_bad_config_fails_fast_with_a_readable_message(head: LocalHead) -> None:
    status, logs = submit_and_wait(head, "medgr2-grpo-bad", ["configs/cpu-tiny.yaml", "--set", "grpo.stepz=3"])
    assert status == "FAILED"
    assert "unknown key 'grpo.stepz'; did you mean 'grpo.steps'?" in logs
    assert "Traceback" not in logs  # a message for a person, not a stack trace
