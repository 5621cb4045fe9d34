"""Metrics: catalogue figures recorded in real actors appear on the node's Prometheus endpoint, and the
run directory's JSONL/TensorBoard log holds what the driver logged."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from medgr2_ray.actors.buffer import RolloutBuffer
from medgr2_ray.metrics import (
    BUFFER_DEPTH, CATALOGUE, SAMPLES_GENERATED, STALENESS, Kind, Metrics, PromSample, RunLog, node_metrics_port,
    read_run_log, scrape_prometheus,
)
from medgr2_ray.types import GenerationRequest, Rollout, ScoredGroup


@ray.remote(num_cpus=0)
class _Recorder:
    """A real actor that records through the facade and says which worker it is."""

    def __init__(self) -> None:
        self.metrics = Metrics(pool="policy", actor="probe-0")

    def record_all(self) -> str:
        for spec in CATALOGUE:
            self.metrics.record(spec, 2.0, pool="policy", actor="probe-0", stage="grpo", side="load")
        self.metrics.record(SAMPLES_GENERATED, 5.0)  # counters add: 2 + 5
        self.metrics.record(STALENESS, 1.0)
        return ray.get_runtime_context().get_worker_id()


def _scrape_until(port: int, found: Callable[[list[PromSample]], bool]) -> list[PromSample]:
    """Scrape until `found` holds; Ray exports every RAY_metrics_report_interval_ms (1 s in tests)."""
    samples: list[PromSample] = []
    for _ in range(60):
        samples = scrape_prometheus(port)
        if found(samples):
            return samples
        time.sleep(1.0)
    raise AssertionError(f"metrics never appeared; last scrape: {sorted({s.name for s in samples})}")


@pytest.fixture(scope="module")
def fresh_ray_cluster(ray_cluster: None) -> Iterator[None]:
    """A new local cluster for the Prometheus test. In the whole suite the session's cluster had run
    hundreds of actors first, and its node stopped exporting gauges (counters and histograms still came,
    every gauge was missing after 60 s; alone the test passed). Later tests get this cluster too."""
    ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, namespace="medgr2-tests", log_to_driver=True)
    yield


def test_actor_metrics_reach_the_prometheus_endpoint(fresh_ray_cluster: None, make_groups: list[ScoredGroup]) -> None:
    recorder = _Recorder.remote()
    worker = ray.get(recorder.record_all.remote())
    buffer = ray.remote(RolloutBuffer).options(num_cpus=0).remote(8)
    ray.get(buffer.put.remote(make_groups))
    port = node_metrics_port()

    def mine(samples: list[PromSample]) -> list[PromSample]:
        return [s for s in samples if s.tags.get("WorkerId") == worker]

    suffix = {Kind.COUNTER: "_total", Kind.GAUGE: "", Kind.HISTOGRAM: "_count"}
    expected = {f"ray_{spec.name}{suffix[spec.kind]}" for spec in CATALOGUE} | {"ray_medgr2_staleness_sum"}
    # Wait for every name, not a count of names: an export can arrive in parts (a histogram's three
    # series before a gauge), which on a loaded machine made a count-based wait pass too early.
    samples = _scrape_until(
        port, lambda s: expected <= {x.name for x in mine(s)}
        and any(x.name == "ray_medgr2_buffer_depth" and x.value == 3.0 for x in s)
    )
    by_name = {s.name: s for s in mine(samples)}
    assert by_name["ray_medgr2_samples_generated_total"].value == 7.0
    assert by_name["ray_medgr2_samples_generated_total"].tags["pool"] == "policy"
    assert by_name["ray_medgr2_weight_version"].value == 2.0
    assert by_name["ray_medgr2_staleness_count"].value == 2.0  # two observations: 2.0 and 1.0
    assert by_name["ray_medgr2_staleness_sum"].value == 3.0
    for spec in CATALOGUE:
        assert f"ray_{spec.name}{suffix[spec.kind]}" in by_name, spec.name
    ray.kill(recorder)
    ray.kill(buffer)


@pytest.fixture
def make_groups() -> list[ScoredGroup]:
    """Three one-rollout groups of weight version 0 (no images: the buffer's depth is what matters)."""
    def group(gid: str) -> ScoredGroup:
        rollout = Rollout(gid, 0, (1,), (2,), "A", np.zeros(1, np.float32), "stop", 0)
        return ScoredGroup(gid, GenerationRequest(gid, "q"), (rollout,), np.ones(1, np.float32))

    return [group(f"m{i}") for i in range(3)]


def test_record_refuses_missing_tags() -> None:
    with pytest.raises(ValueError, match="needs tags"):
        Metrics().record(SAMPLES_GENERATED, 1.0, pool="policy")
    Metrics().record(BUFFER_DEPTH, 3.0, unrelated="ignored")  # extra defaults are dropped per spec


def test_run_log_writes_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with RunLog(tmp_path) as log:
        log.log(0, {"reward_mean": 0.25, "loss": float("nan")})
        log.log(1, {"reward_mean": 0.5})
    records = read_run_log(tmp_path)
    assert [r["step"] for r in records] == [0, 1]
    assert records[0]["reward_mean"] == 0.25 and records[0]["loss"] is None
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("grpo/reward_mean")] == [0.25, 0.5]
