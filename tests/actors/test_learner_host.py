"""Learners hosted by Ray Train (`actors/learner_host.py`) on a real Ray cluster with a real tiny VLM:
they learn, a SIGKILLed worker group comes back from its last checkpoint and redoes exactly the lost
steps (the result equals an uninterrupted run's, versions only grow), a SIGKILLed feed comes back from
its durable state and the driver re-submits what it lost (every step reported once, the same weights bit
for bit), and a new learner in a used storage directory never continues the old one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from medgr2_ray.actors.learner_host import FEED_DIED, LearnerHost, LearnerModel, LearnerSpec
from medgr2_ray.config import GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.data.store import write_png
from medgr2_ray.messages import Recipe, TrainWork, WorkDone
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import MedImage, Modality, Sample, TaskType
from tests.loop.conftest import _dicom_rgb

pytestmark = pytest.mark.slow
OPTIONS = ("CT", "MR", "X-Ray", "Ultrasound")


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> dict:
    """Two real slices (CT, MR) as pixels refs and records, modality questions about them, a tiny VLM."""
    root = tmp_path_factory.mktemp("host")
    images, pool, samples = {}, {}, []
    for name, modality in (("CT_small.dcm", Modality.CT), ("MR_small.dcm", Modality.MR)):
        pixels = _dicom_rgb(name)
        write_png(pixels, root / f"{name}.png")
        images[name] = pixels
        pool[name] = MedImage(name, str(root / f"{name}.png"), modality, "head", "pydicom-data", "MIT", name,
                              pixels.shape[1], pixels.shape[0])
        samples += [Sample(f"{name}-{k}", name, str(root / f"{name}.png"), "Which modality is this?", OPTIONS,
                           modality.value if modality is Modality.CT else "MR", TaskType.MODALITY, modality)
                    for k in range(4)]
    return {"root": root, "images": images, "pool": pool, "samples": samples,
            "model": str(ensure_model_dir(ModelConfig(), tiny_cache, 0, "policy"))}


def _host(setting: dict, name: str, storage: Path, checkpoint_every: int = 4, fresh: bool = True) -> LearnerHost:
    refs = {k: ray.put(v) for k, v in setting["images"].items()}
    spec = LearnerSpec(name, LearnerModel.POLICY, setting["model"], ModelConfig(), LearnerConfig(lr=5e-3),
                       GRPOConfig(), 0, str(storage), refs, setting["pool"], checkpoint_every=checkpoint_every)
    return LearnerHost(spec, num_ranks=1, cpus_per_rank=0.5, gpus_per_rank=0.0, fresh=fresh)


def _train(host: LearnerHost, batch: object, steps: range, kill_at: int | None = None) -> list[float]:
    """SFT steps on one batch; `kill_at`: SIGKILL the train worker once that step is done."""
    losses = []
    for step in steps:
        done = host.run(TrainWork(Recipe.SOLVER_SFT, batch, step, publish=True), timeout_s=600)
        losses.append(done[0].metrics["loss"])
        if step == kill_at:
            pid = ray.get(host.feed.worker_pid.remote())
            os.kill(pid, signal.SIGKILL)
            time.sleep(1.0)
    return losses


def test_sft_learns_and_a_sigkilled_worker_redoes_exactly_the_lost_steps(
        ray_cluster: None, setting: dict, tmp_path: Path) -> None:
    batch = ray.put(setting["samples"])
    straight = _host(setting, "host-straight", tmp_path / "a")
    try:
        losses = _train(straight, batch, range(10))
        # The test cluster starts as `medgr2 run`'s local one (conftest: `lean_local_cluster`): Ray Train's
        # helpers run, but no PreemptionWatcher (nothing drains a local node; each idle actor costs CPU).
        alive = {a["ActorClassName"] for a in ray._private.state.actors().values() if a["State"] == "ALIVE"}
        assert "TrainController" in alive and "PreemptionWatcher" not in alive, sorted(alive)
        want = straight.weights_numpy()
        v_straight = straight.latest().version
    finally:
        straight.stop()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])  # it learns: the answers' loss falls

    killed = _host(setting, "host-killed", tmp_path / "b")
    try:
        _train(killed, batch, range(10), kill_at=5)  # the checkpoint covers items 0-3: items 4 and 5 are redone
        got = killed.weights_numpy()
        status = killed.status()
        assert status.restarts == 1
        assert killed.latest().version > v_straight  # a restarted learner publishes above all it published
    finally:
        killed.stop()
    assert set(got) == set(want)
    for name in want:  # redone on the same batches from the same checkpoint: the same weights, bit for bit
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_new_learner_in_a_used_storage_directory_starts_over(ray_cluster: None, setting: dict,
                                                                 tmp_path: Path) -> None:
    batch = ray.put(setting["samples"])
    first = _host(setting, "host-reuse", tmp_path, checkpoint_every=2)
    try:
        _train(first, batch, range(4))
        trained = first.weights_numpy()
    finally:
        first.stop()
    second = _host(setting, "host-reuse", tmp_path, checkpoint_every=2)  # same name, same storage, fresh
    try:
        again = second.weights_numpy()
        assert second.latest().version == 0
    finally:
        second.stop()
    assert any((again[k] != trained[k]).any() for k in trained), "the new learner continued the old one"


def _pipelined(host: LearnerHost, batch: object, steps: int, kill_feed_after: int | None = None) -> list[WorkDone]:
    """SFT steps two at a time in the learner's queue, read as the flywheel's lanes read them (a result the
    feed's death failed is asked for again: `recover`); `kill_feed_after`: SIGKILL the feed once that
    step's result is in, with the next step in flight. Returns rank 0's reports in the order received."""
    got: list[WorkDone] = []
    waiting: dict[object, int] = {}
    step = 0
    while step < steps or waiting:
        while step < steps and len(waiting) < 2:
            waiting[host.start(TrainWork(Recipe.SOLVER_SFT, batch, step, publish=True))] = step
            step += 1
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=600)
        assert ready, "no learner step finished within 10 minutes"
        ref = ready[0]
        try:
            dones = ray.get(ref)
        except FEED_DIED:
            waiting[host.recover(ref)] = waiting.pop(ref)
            continue
        host.received(ref)
        got.append(dones[0])
        if waiting.pop(ref) == kill_feed_after:
            os.kill(ray.get(host.feed.ready.remote()).pid, signal.SIGKILL)
    return got


def test_a_sigkilled_feed_loses_no_step_and_counts_none_twice(ray_cluster: None, setting: dict,
                                                               tmp_path: Path) -> None:
    batch = ray.put(setting["samples"])
    straight = _host(setting, "feed-straight", tmp_path / "a")
    try:
        _pipelined(straight, batch, 8)
        want, v_straight = straight.weights_numpy(), straight.latest().version
    finally:
        straight.stop()

    killed = _host(setting, "feed-killed", tmp_path / "b")
    try:
        reports = _pipelined(killed, batch, 8, kill_feed_after=5)  # its checkpoint covers items 0-3
        info = ray.get(killed.feed.ready.remote())
        got = killed.weights_numpy()
        assert info.restarted and killed.feed_restarts == 1  # the feed died once, and came back
        assert killed.status().restarts == 1  # the worker group restarted once, from the checkpoint
        assert killed.latest().version > v_straight  # republished above everything published before
    finally:
        killed.stop()
    # By id: every step reported exactly once (none lost, none twice), none only as a lost report.
    assert sorted(r.index for r in reports) == list(range(8))
    assert not any(r.extra.get("report_lost") for r in reports)
    assert set(got) == set(want)
    for name in want:  # redone from the same checkpoint on the same batches: the same weights, bit for bit
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_feed_killed_with_nothing_in_flight_gets_its_items_back(ray_cluster: None, setting: dict,
                                                                 tmp_path: Path) -> None:
    """Items 4 and 5 are trained and read, but no checkpoint covers them yet, when the feed dies with no
    result outstanding: no failed ref tells the host, so the next `latest()` (which the loops call every
    second) must give the restarted feed those items back, or the restarted workers wait for them forever."""
    batch = ray.put(setting["samples"])
    straight = _host(setting, "idle-straight", tmp_path / "a")
    try:
        _train(straight, batch, range(8))
        want = straight.weights_numpy()
    finally:
        straight.stop()
    killed = _host(setting, "idle-killed", tmp_path / "b")
    try:
        _train(killed, batch, range(6))  # the checkpoint covers items 0-3
        pid = ray.get(killed.feed.ready.remote()).pid
        os.kill(pid, signal.SIGKILL)
        _wait_for_new_process(killed.feed, pid)  # so the next step goes to the new feed and does not fail
        killed.latest()  # the loops' periodic read: notices the new incarnation and re-submits 4 and 5
        reports = [killed.run(TrainWork(Recipe.SOLVER_SFT, batch, step, publish=True), timeout_s=600)[0]
                   for step in (6, 7)]
        assert killed.feed_restarts == 1 and killed.status().restarts == 1
        got = killed.weights_numpy()
    finally:
        killed.stop()
    assert [r.index for r in reports] == [6, 7]
    for name in want:  # items 4 and 5 redone from the checkpoint on the same batch: the same weights
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _wait_for_new_process(actor: object, old_pid: int) -> None:
    """Until Ray has restarted `actor` in a process other than `old_pid`."""
    for _ in range(600):
        try:
            if ray.get(actor.ready.remote(), timeout=30).pid != old_pid:  # type: ignore[attr-defined]
                return
        except FEED_DIED:
            pass
        time.sleep(0.2)
    raise TimeoutError("the actor did not come back")
