"""Every `medgr2` command, given a missing file, a mistyped key, a config that cannot fit, or a Ray
address where nothing listens, prints one line per problem that names the thing and says what to do,
never a traceback, and exits non-zero; `--debug` adds the traceback. No Ray cluster is started here:
each case fails before one would be."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from medgr2_ray.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "cpu-tiny.yaml")


def _dead_address() -> str:
    """host:port where nothing listens (a port the OS just handed out and that was closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], status: int) -> list[str]:
    """Run the command; it must exit with `status` and print only `medgr2 <command>: ...` lines."""
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "Traceback" not in err
    assert all(line.startswith("medgr2 ") for line in lines), err
    return lines


MISSING_FILES = [
    (["run", "nope.yaml"], "'nope.yaml' does not exist"),
    (["config", "show", "nope.yaml"], "'nope.yaml' does not exist"),
    (["models", "build-tiny", "nope.yaml"], "'nope.yaml' does not exist"),
    (["eval", "transfer", "nope.yaml", "--protocol", "cross-task"], "'nope.yaml' does not exist"),
    (["eval", "score", "nope.jsonl"], "'nope.jsonl' does not exist"),
    (["data", "ingest", "/nonexistent/scans", "--out", "{tmp}/pool"], "/nonexistent/scans does not exist"),
    (["data", "templates", "/nonexistent/pool", "--out", "{tmp}/t.jsonl"], "pool.jsonl is missing"),
    (["data", "convert", "vqa-rad", "/nonexistent/vqa.json", "--out", "{tmp}/s.jsonl"], "/nonexistent/vqa.json does not exist"),
    (["data", "seed-pool", "--config", "nope.yaml"], "'nope.yaml' does not exist"),
]


@pytest.mark.parametrize("argv,named", MISSING_FILES, ids=[" ".join(a[:2]) for a, _ in MISSING_FILES])
def test_a_missing_file_is_one_line(argv: list[str], named: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    status = 2 if argv[-1] == "nope.yaml" or "nope.yaml" in argv else 1
    lines = _fails(argv, capsys, status)
    assert len(lines) == 1 and named in lines[0]
    assert lines[0].startswith(f"medgr2 {argv[0]}")


TYPOS = [
    ["run", TINY, "--set", "grpo.stepz=3"],
    ["config", "show", TINY, "--set", "grpo.stepz=3"],
    ["models", "build-tiny", TINY, "--set", "grpo.stepz=3"],
    ["eval", "transfer", TINY, "--protocol", "cross-task", "--set", "grpo.stepz=3"],
    ["data", "seed-pool", "--config", TINY, "--set", "grpo.stepz=3"],
]


@pytest.mark.parametrize("argv", TYPOS, ids=[" ".join(a[:2]) for a in TYPOS])
def test_a_mistyped_key_names_the_closest_valid_one(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = _fails(argv, capsys, 2)
    assert "unknown key 'grpo.stepz'; did you mean 'grpo.steps'?" in line


def test_more_workers_than_cpus_names_the_section_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    # The flywheel keeps every actor alive at once: 5 generators + scorer + policy rollout + 3 learners = 10
    lines = _fails(["run", TINY, "--set", "generator_pool.min_workers=5", "--set", "generator_pool.max_workers=5"],
                   capsys, 2)
    (line,) = lines
    assert "ray.num_cpus=8" in line and "10 CPUs" in line and "generator_pool.min_workers" in line
    (line,) = _fails(["run", TINY, "--set", "learner.num_ranks=4"], capsys, 2)
    assert "learner.num_ranks" in line


def test_a_floor_above_its_ceiling_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = _fails(["run", TINY, "--set", "ray.num_cpus=64", "--set", "scorer_pool.min_workers=2"], capsys, 2)
    assert "scorer_pool.min_workers=2 is above scorer_pool.max_workers=1" in line


UNREACHABLE = [
    ["status", "--address", "{addr}"],
    ["run", TINY, "--set", "ray.address={addr}"],
    ["eval", "transfer", TINY, "--protocol", "cross-task", "--set", "ray.address={addr}"],
    ["data", "ingest", str(REPO / "configs"), "--out", "{tmp}/pool", "--address", "{addr}"],
]


@pytest.mark.parametrize("argv", UNREACHABLE, ids=[a[0] + (" " + a[1] if a[0] in ("eval", "data") else "")
                                                   for a in UNREACHABLE])
def test_ray_not_reachable_is_one_line(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = _dead_address()
    argv = [a.replace("{addr}", address).replace("{tmp}", str(tmp_path)) for a in argv]
    (line,) = _fails(argv, capsys, 1)
    assert f"cannot reach a Ray cluster at {address}" in line and "ray start --head" in line


def test_debug_adds_the_traceback_before_or_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--debug", "config", "show", "nope.yaml"], ["config", "show", "nope.yaml", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "ConfigError" in err
        assert err.rstrip().splitlines()[-1].startswith("medgr2 config show: config error:")


def test_other_failures_are_one_line_too() -> None:
    from medgr2_ray.cli.errors import describe

    assert describe(RuntimeError("boom\n  deep detail")) == (
        ["unexpected error (RuntimeError: boom); rerun with --debug for the traceback and report it"], 1)
    failed = RuntimeError("actor died")
    failed.add_note("Ray's log of this run: runs/x/logs/ray.log")
    assert describe(failed)[0][0].endswith("report it (Ray's log of this run: runs/x/logs/ray.log)")
    assert describe(PermissionError(13, "Permission denied", "/data/pool")) == (
        ["/data/pool cannot be read or written (permissions); check the path"], 1)
    assert describe(ConnectionError("")) == (
        ["cannot reach the Ray cluster; start one with `ray start --head` or set its address "
         "(ray.address, --address or RAY_ADDRESS)"], 1)
