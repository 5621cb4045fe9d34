"""Every learner of the cycle (G, R and the solver P) hosted one way: a Ray Train `TorchTrainer` whose
train function runs the work its `LearnerFeed` hands out.

Why Ray Train: it places the ranks (a placement group, one bundle per rank), builds the process group
(gloo on CPU, NCCL on GPU; DeepSpeed ZeRO runs inside the function through `learner.strategy`), and its
`FailureConfig` restarts a dead worker group. The feed makes that restart lossless: the new group loads
the newest checkpoint the old one recorded there, asks again from the first item it does not cover, and
redoes those items on the very same batches (see `actors/feed.py` for why the feed, not Ray Train's
checkpoint registry, names the checkpoint).

The train function (`learner_loop`) builds the learner the spec names (`PolicyLearner` for G and P,
`RewardLearner` for R), then, on every rank, in order: pulls item i, runs it (a training step through
`learner.recipes`, a publish, a save, a checkpoint), reports a `WorkDone`, and every `checkpoint_every`
items writes an exact checkpoint (the two newest are kept) and records it in the feed. Rank 0 publishes weights through the object store
(`sync.weights.publish_weights`); objects a worker puts die with it, so after a restart it publishes
again at once, above the newest version the feed has seen (versions only grow).

`LearnerHost` is the driver's handle: `start` queues an item and returns the ref of its result, which the
controller can `ray.wait` on (`submit` + `result_ref` in one call; neither waits for the feed); `run`
submits and waits; `latest` is the newest published `WeightVersion`. A training step's `WorkDone`
carries `batch_wait_s` (how long its batch took to arrive: the item may be queued before the batch
exists) and `publish_s` beside the recipe's metrics. A feed that dies is restarted by Ray from its
saved state; `recover` (used by `run` and the flywheel's lanes) re-submits what it lost and asks again for
a failed result (`actors/feed.py`). `fit()` runs
inside a Ray task, so the driver stays free, and a learner that fails for good surfaces as that task's
error (`check`).
"""

from __future__ import annotations

import enum
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.config import AugmentConfig, GRPOConfig, GradedDataConfig, LearnerConfig, ModelConfig
from medgr2_ray.messages import (CheckpointWork, FeedCheckpoint, FeedStatus, PublishWork, RestoreWork, SaveWork, StageWork, StopWork,
                                 TrainWork, Work, WorkDone)
from medgr2_ray.types import MedImage, RewardObjective, WeightVersion

KEEP_CHECKPOINTS = 2  # a learner's newest checkpoints kept on disk


class LearnerModel(enum.Enum):
    """Which learner class a spec builds."""

    POLICY = "policy"  # PolicyLearner: the generator G and the solver P
    REWARD = "reward"  # RewardLearner: the reward model R


@dataclass(frozen=True)
class LearnerSpec:
    """Everything a learner's worker group needs, in one typed message."""

    name: str  # "GeneratorLearner", "RewardLearner", "PolicyLearner": the dashboard and status show it
    model: LearnerModel
    model_dir: str
    model_cfg: ModelConfig
    learner_cfg: LearnerConfig
    grpo_cfg: GRPOConfig
    seed: int
    storage: str  # Ray Train's storage path (the run's `ray_train/`): checkpoints live here
    images: dict[str, Any] = field(default_factory=dict)  # image id -> ObjectRef of its pixels
    pool: dict[str, MedImage] = field(default_factory=dict)  # image id -> record
    objective: RewardObjective | None = None  # R only
    graded: GradedDataConfig = field(default_factory=GradedDataConfig)
    augment: bool = False
    augmentation: AugmentConfig | None = None
    checkpoint_every: int = 50  # work items between Ray Train checkpoints (0: never)
    max_failures: int = 3  # worker-group restarts Ray Train may make
    torch_threads: int = 1


def _build_learner(spec: LearnerSpec, rank: int, world: int, local_rank: int) -> Any:
    if spec.model is LearnerModel.REWARD:
        from medgr2_ray.learner.reward import RewardLearner

        return RewardLearner(spec.model_dir, spec.model_cfg, spec.learner_cfg, spec.seed, rank, world, local_rank,
                             spec.objective)
    from medgr2_ray.learner.policy import PolicyLearner

    return PolicyLearner(spec.model_dir, spec.model_cfg, spec.learner_cfg, spec.grpo_cfg, spec.seed, rank, world,
                         local_rank)


def _publish(learner: Any, rank: int) -> WeightVersion | None:
    """Every rank takes part in the export (a ZeRO-3 gather is collective); rank 0 puts the weights."""
    from medgr2_ray.sync.weights import publish_weights

    flat = learner.export_weights()
    return publish_weights(flat, int(learner.version)) if rank == 0 and flat is not None else None


def _execute(learner: Any, work: Work, ctx: Any, rank: int) -> tuple[dict[str, float], Any, Any, dict[str, Any]]:
    """Run one item; returns (metrics, weights, step report, extra)."""
    from medgr2_ray.learner.recipes import run_recipe

    if isinstance(work, TrainWork):
        before, start = int(learner.version), time.perf_counter()
        try:
            batch = ray.get(work.batch)
        except ray.exceptions.RayError as exc:  # its producer died, or the batch came up short: redone
            return {}, None, None, {"error": f"{type(exc).__name__}: the batch is lost"}
        waited = time.perf_counter() - start  # the item may be queued before its batch exists
        try:
            outcome = run_recipe(learner, work.recipe, batch, work.step, ctx)
        except ValueError as exc:  # a batch the recipe cannot use: skipped and counted, never the run's end
            return {"skipped": 1.0}, None, None, {"skipped": f"{work.recipe.value} step {work.step}: {exc}"}
        # A skipped step (nothing informative to train on) leaves the weights as they are: nothing to publish.
        start = time.perf_counter()
        weights = _publish(learner, rank) if work.publish and int(learner.version) != before else None
        timing = {"batch_wait_s": waited, "publish_s": time.perf_counter() - start}
        return {**outcome.metrics, **timing}, weights, outcome.report, {}
    if isinstance(work, PublishWork):
        return {}, _publish(learner, rank), None, {}
    if isinstance(work, SaveWork):
        learner.save_pretrained(work.directory)
        return {}, None, None, {"directory": work.directory}
    if isinstance(work, CheckpointWork):
        learner.save_checkpoint(work.directory, work.extra)
        return {}, None, None, {"directory": work.directory}
    if isinstance(work, StageWork):
        learner.new_stage(work.learner_cfg)
        return {}, None, None, {}
    if isinstance(work, RestoreWork):
        extra = learner.load_checkpoint(work.directory)
        return {}, _publish(learner, rank), None, extra
    raise TypeError(f"{type(work).__name__} is not a learner work item")


def _checkpoint(learner: Any, spec: LearnerSpec, index: int, rank: int, feed: Any, token: str,
                steps: dict[str, int]) -> None:
    """All ranks write one checkpoint at a path they share; rank 0 tells the feed, which a restarted group
    asks where to resume (older checkpoints are removed once a newer one is recorded). `steps`: training
    steps run per recipe so far (a `--resume` continues each recipe's count from there)."""
    import ray.train

    staging = Path(spec.storage) / f"{spec.name}-checkpoints"
    learner.save_checkpoint(staging / f"item_{index:08d}", extra={"index": index, "recipe_steps": dict(steps)})
    ray.train.report({"index": index, "version": int(learner.version)})
    if rank == 0:
        ray.get(feed.covered.remote(index, str(staging / f"item_{index:08d}"), token, dict(steps)))
        for old in sorted(staging.glob("item_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


def _resume(learner: Any, feed: Any, rank: int) -> tuple[int, str, dict[str, int]]:
    """Announce this worker to the feed and load the checkpoint it names; returns (first item, the feed's
    token, training steps per recipe inside the checkpoint)."""
    start = ray.get(feed.start.remote(rank, os.getpid()))
    steps: dict[str, int] = {}
    if start.checkpoint is not None:
        steps = {str(k): int(v) for k, v in learner.load_checkpoint(start.checkpoint).get("recipe_steps", {}).items()}
    restarted = start.floor > 0 or start.checkpoint is not None
    learner.version = max(int(learner.version), int(start.floor) + (1 if restarted else 0))
    if restarted:  # what the dead group published died with it: publish again, above it
        weights = _publish(learner, rank)
        if weights is not None:
            feed.publish.remote(weights)
    return start.first, start.token, steps


def learner_loop(config: dict[str, Any]) -> None:  # runs in every Ray Train worker
    """The train function (see the module docstring)."""
    import ray.train
    import torch

    from medgr2_ray.data.images import ImageCache
    from medgr2_ray.learner.recipes import RecipeContext

    spec: LearnerSpec = config["spec"]
    feed = config["feed"]
    torch.set_num_threads(spec.torch_threads)
    ctx_train = ray.train.get_context()
    rank, world, local = ctx_train.get_world_rank(), ctx_train.get_world_size(), ctx_train.get_local_rank()
    learner = _build_learner(spec, rank, world, local)
    images = ImageCache(refs=spec.images, resolve=ray.get)
    ctx = RecipeContext(images, spec.pool, spec.seed, rank, world, spec.graded, spec.augment, spec.augmentation)
    index, token, steps = _resume(learner, feed, rank)
    while True:
        # A feed that died (or restarted) fails this call: the group fails and Ray Train restarts it.
        work = ray.get(feed.next.remote(rank, index, token))
        if isinstance(work, StopWork):
            feed.complete.remote(WorkDone(index, rank, int(learner.version), {}, time.time(), time.time()), token)
            return
        started = time.time()
        metrics, weights, report, extra = _execute(learner, work, ctx, rank)
        error, skipped = extra.pop("error", None), extra.pop("skipped", None)
        if skipped is not None and rank == 0:
            print(f"[{spec.name}] skipped {skipped}", flush=True)
        if isinstance(work, TrainWork) and error is None:
            steps[work.recipe.value] = max(steps.get(work.recipe.value, 0), work.step + 1)
        # Not waited on: the feed records reports in any order, and a report lost with a dying worker is
        # redone by its successor (items after the checkpoint are redone), so nothing waits for the answer.
        feed.complete.remote(WorkDone(index, rank, int(learner.version), metrics, started, time.time(), weights,
                                      report, extra, error), token)
        index += 1
        if spec.checkpoint_every and index % spec.checkpoint_every == 0:
            _checkpoint(learner, spec, index, rank, feed, token, steps)


def feed_state_path(storage: str | Path, name: str) -> Path:
    """Where the feed of learner `name` keeps its durable state (covered index, checkpoint, version floor)."""
    return Path(storage) / f"{name}-feed.json"


def _fit(trainer: Any) -> None:  # a Ray task: keeps the driver free while the learner runs
    result = trainer.fit()
    if result.error is not None:
        raise result.error


class LearnerError(RuntimeError):
    """A learner's worker group failed for good (its restarts are used up)."""


FEED_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)  # a call the feed's death failed
FEED_RETRIES = 20  # calls to a restarting feed tried again this many times before giving up


class LearnerHost:
    """Driver-side handle on one Ray-Train-hosted learner (see the module docstring)."""

    def __init__(self, spec: LearnerSpec, num_ranks: int, cpus_per_rank: float, gpus_per_rank: float,
                 fresh: bool = True) -> None:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from medgr2_ray.actors.feed import LearnerFeed

        self.spec, self.name = spec, spec.name
        storage = Path(spec.storage)
        state = feed_state_path(spec.storage, spec.name)
        # Ray Train restores any snapshot under the same name: a new run must not continue an old one, and a
        # resumed one (`fresh=False`) continues from the feed's state and checkpoints, not from Ray Train's.
        shutil.rmtree(storage / spec.name, ignore_errors=True)
        if fresh:
            shutil.rmtree(storage / f"{spec.name}-checkpoints", ignore_errors=True)
            state.unlink(missing_ok=True)
        # Ray restarts a dead feed, which reloads its durable state; its calls are never retried (a call
        # the death failed is answered here: `recover`).
        self.feed = ray.remote(LearnerFeed).options(name=f"{spec.name}Feed", num_cpus=0, max_restarts=-1,
                                                    max_task_retries=0).remote(spec.name, num_ranks, str(state),
                                                                               not fresh)
        resumed: FeedCheckpoint = ray.get(self.feed.checkpoint.remote())
        self.resumed = resumed  # where a `--resume` continues (index 0, no directory: from the start)
        self._next_index = resumed.first
        self._items: dict[int, Work] = {}  # every item queued and not yet known to be inside a checkpoint
        self._refs: dict[str, int] = {}  # result ref's id -> its item (`recover` asks again for the same item)
        self._covered_ref: Any = None  # a pending `checkpoint()` call (see `_index`)
        self._token: str = ray.get(self.feed.incarnation.remote())  # the feed incarnation that holds our items
        self.feed_restarts = 0
        use_gpu = gpus_per_rank > 0
        trainer = TorchTrainer(
            learner_loop, train_loop_config={"spec": spec, "feed": self.feed},
            scaling_config=ScalingConfig(num_workers=num_ranks, use_gpu=use_gpu, resources_per_worker={
                "CPU": cpus_per_rank, **({"GPU": gpus_per_rank} if use_gpu else {})}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=spec.name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=spec.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        self.fit_ref = ray.remote(_fit).options(num_cpus=0, max_retries=0, name=f"{spec.name}-fit").remote(trainer)

    def _index(self, work: Work) -> int:
        # Items are numbered here, so queueing one never waits for the feed's answer.
        index, self._next_index = self._next_index, self._next_index + 1
        self._items[index] = work
        if self._covered_ref is None or ray.wait([self._covered_ref], timeout=0)[0]:
            # Now and then, without waiting: forget the items a checkpoint covers (they hold batch refs).
            if self._covered_ref is not None:
                try:
                    self._forget(ray.get(self._covered_ref).first)
                except FEED_DIED:
                    pass
            self._covered_ref = self.feed.checkpoint.remote()
        return index

    def submit(self, work: Work) -> int:
        """Queue one item (not waited for); returns its index."""
        index = self._index(work)
        self.feed.submit.remote(work, index)
        return index

    def start(self, work: Work) -> Any:
        """Queue one item and return the ref of every rank's `WorkDone` for it: one call, nothing waited for."""
        index = self._index(work)
        ref = self.feed.run.remote(index, work)
        self._refs[ref.hex()] = index  # by id: holding the ref would keep its weights in the object store
        return ref

    def result_ref(self, index: int) -> Any:
        """An object ref resolving to every rank's `WorkDone` for item `index`."""
        ref = self.feed.result.remote(index)
        self._refs[ref.hex()] = index
        return ref

    def received(self, ref: Any) -> None:
        """The result `ref` was read: a feed restart need not ask for it again."""
        self._refs.pop(ref.hex(), None)

    def _forget(self, covered: int) -> None:
        for i in [i for i in self._items if i < covered]:
            del self._items[i]

    def _feed_call(self, method: str, *args: Any) -> Any:
        """One call to the feed, tried again while it restarts."""
        for attempt in range(FEED_RETRIES):
            try:
                return ray.get(getattr(self.feed, method).remote(*args))
            except FEED_DIED:
                self.check()
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
        raise LearnerError(f"{self.name}: its feed did not come back after {FEED_RETRIES} tries")

    def recover(self, ref: Any) -> Any:
        """`ref` failed because the feed died: make sure the restarted feed holds every item not inside its
        checkpoint again (once per incarnation), and return a new ref for the same item's result."""
        index = self._refs.pop(ref.hex())
        self.resync()
        return self.result_ref(index)

    def resync(self) -> None:
        """If the feed restarted since this host last looked, queue every item no checkpoint covers on it
        again (once per incarnation). A failed result ref is one way to notice; `latest()`, which the loops
        call every second, is the other: a feed that died when no result was outstanding (its last items
        read, but not yet inside a checkpoint) would otherwise leave the restarted workers waiting forever
        for items only this host still holds."""
        token = self._feed_call("incarnation")
        if token == self._token:
            return
        self.feed_restarts += 1
        covered: FeedCheckpoint = self._feed_call("restore", dict(self._items))
        self._forget(covered.first)
        self._token = token
        print(f"[{self.name}] feed restarted: re-submitted items {covered.first}..{self._next_index - 1}", flush=True)

    def feed_died_in(self, exc: BaseException) -> bool:
        """Whether a call failed because this learner's feed died (its own call, or one chained on its
        result: Ray fails those with the feed's error, naming the feed's actor)."""
        return isinstance(exc, FEED_DIED) and getattr(exc, "actor_id", None) == self.feed._actor_id.hex()

    def run(self, work: Work, timeout_s: float | None = None) -> list[WorkDone]:
        """Submit one item and wait for it (raises `LearnerError` if the learner died for good meanwhile)."""
        ref = self.start(work)
        while True:
            done, _ = ray.wait([ref, self.fit_ref], num_returns=1, timeout=timeout_s)
            if ref not in done:
                self.check()
                raise TimeoutError(f"{self.name}: no result within {timeout_s} s")
            try:
                result = ray.get(ref)
            except FEED_DIED:
                ref = self.recover(ref)
                continue
            self.received(ref)
            return result

    def check(self) -> None:
        """Raise `LearnerError` if the learner's `fit()` ended with an error."""
        done, _ = ray.wait([self.fit_ref], timeout=0)
        if done:
            try:
                ray.get(self.fit_ref)
            except Exception as exc:  # the task's error is the learner's: name it
                raise LearnerError(f"{self.name} failed: {exc}") from exc

    def latest(self) -> WeightVersion | None:
        """The newest weights this learner published (None for a while after its feed restarted); gives a
        restarted feed its items back first (`resync`)."""
        self.resync()
        return self._feed_call("latest")

    def status(self) -> FeedStatus:
        """Queue and progress."""
        return self._feed_call("status")

    # ------------------------------------------------------------ one-item conveniences
    def publish(self) -> WeightVersion:
        """Publish the current weights and return them."""
        done = self.run(PublishWork())
        return done[0].weights if done[0].weights is not None else self.latest()  # type: ignore[return-value]

    def save_pretrained(self, directory: str | Path) -> str:
        """Write the model as a Hugging Face directory (LoRA merged); returns the path."""
        self.run(SaveWork(str(directory)))
        return str(directory)

    def save_checkpoint(self, directory: str | Path, extra: dict[str, Any]) -> str:
        """An exact checkpoint (weights, optimizer, schedule, version, RNG) at `directory`."""
        self.run(CheckpointWork(str(directory), dict(extra)))
        return str(directory)

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        """Restore a `save_checkpoint` directory (and publish the restored weights); returns its extra."""
        return self.run(RestoreWork(str(directory)))[0].extra

    def weights_numpy(self) -> dict[str, Any]:
        """The current weights as numpy arrays by name (tests compare runs with it)."""
        from medgr2_ray.sync.flat import unpack_tensors

        flat = ray.get(self.publish().ref)
        return {k: v.detach().numpy().copy() for k, v in unpack_tensors(flat).items()}

    def stop(self, timeout_s: float = 120.0) -> None:
        """End the train loop and wait for `fit()` to return; the feed goes with it."""
        self.submit(StopWork())
        try:
            ray.get(self.fit_ref, timeout=timeout_s)
        finally:
            ray.kill(self.feed)
