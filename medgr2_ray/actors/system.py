"""ActorSystem: build (and stop, once) the long-lived actors of a run from the typed config.

The whole cycle (`build_flywheel`) has: the generator pool (G engines), the scorer pool (R, inference
only), the policy pool (P engines), three learners hosted one way (`LearnerHost`: Ray Train) for G, R and
P, the kept-sample store, the rollout buffer and the monitor. A bare GRPO loop (`build`) has the policy
pool, the scorer pool, P's learner, the buffer and the monitor.

The resources each actor asks Ray for come from the config only: `generator_pool`, `rollout_pool`,
`scorer_pool` (`num_cpus`, `num_gpus`, custom `resources`, `max_restarts`) and `learner` (ranks, CPUs
and GPUs per rank). Every actor gets one typed spec. Names carry a prefix so two runs can share a
namespace; with the default empty prefix the dashboard's actor list reads `generator-rollout-0`,
`scorer-0`, `policy-rollout-0`, `GeneratorLearnerFeed`, `KeptStore`, `RolloutBuffer`, `LoopMonitor`,
like the design diagram.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.actors.buffer import RolloutBuffer
from medgr2_ray.actors.learner_host import LearnerHost, LearnerModel, LearnerSpec
from medgr2_ray.actors.monitor import MONITOR_NAME, LoopMonitor
from medgr2_ray.actors.pool import WorkerPool
from medgr2_ray.actors.rollout import RolloutActor, RolloutSpec
from medgr2_ray.actors.scorer import ScorerActor, ScorerSpec
from medgr2_ray.actors.store import KeptStore, StoreSpec
from medgr2_ray.config import Config, ModelConfig
from medgr2_ray.types import MedImage, RewardObjective


LEARNER_NAMES = ("GeneratorLearner", "RewardLearner", "PolicyLearner")  # the cycle's learners (before the prefix)


@dataclass(frozen=True)
class ModelDirs:
    """Where each model of the cycle starts from."""

    policy: str
    generator: str
    reward_model: str


@dataclass(frozen=True)
class Shared:
    """What many actors of one run share: image refs and records, the monitor, names, storage."""

    cfg: Config
    prefix: str
    storage: str  # Ray Train's storage path
    monitor: Any
    images: dict[str, Any]  # image id -> ObjectRef of its pixels
    pool: dict[str, MedImage]
    pinned: list[Any]  # constructor-argument refs of the named actors (kept for Ray's restarts)


def reward_objective(cfg: Config) -> RewardObjective:
    """R's objective from the config: a verifier head starts spanning the graded targets."""
    targets = (cfg.graded.faithful, cfg.graded.perturbed, cfg.graded.incoherent, cfg.graded.irrelevant)
    return RewardObjective(verifier=cfg.cycle.rm_verifier, answer_loss=cfg.cycle.rm_answer_loss,
                           low=min(targets), high=max(targets))


def rollout_pool(shared: Shared, name: str, model_dir: str, model_cfg: ModelConfig, salt: int,
                 pool_cfg: Any) -> WorkerPool:
    """A pool of `RolloutActor`s; each actor gets its own engine seed, so no two draw the same samples."""
    cfg = shared.cfg
    return WorkerPool(f"{shared.prefix}{name}", RolloutActor, pool_cfg, lambda i: RolloutSpec(
        f"{shared.prefix}{name}", model_dir, model_cfg, cfg.engine, cfg.run.seed + salt * (i + 1),
        cfg.run.torch_threads, shared.images, shared.monitor))


def scorer_pool(shared: Shared, reward_dir: str | None, objective: RewardObjective | None) -> WorkerPool:
    """A pool of `ScorerActor`s holding R (inference only)."""
    cfg = shared.cfg
    return WorkerPool(f"{shared.prefix}scorer", ScorerActor, cfg.scorer_pool, lambda i: ScorerSpec(
        reward_dir, cfg.reward_model, cfg.reward, cfg.learner.micro_batch_size, cfg.run.seed, objective,
        cfg.run.torch_threads, shared.images, shared.monitor), out_of_order=True)


def learner(shared: Shared, name: str, kind: LearnerModel, model_dir: str, model_cfg: ModelConfig,
            fresh: bool = True, cfg: Config | None = None) -> LearnerHost:
    """One learner hosted by Ray Train (`cfg` overrides the shared config, e.g. GRPO's own rate)."""
    cfg = cfg or shared.cfg
    spec = LearnerSpec(
        f"{shared.prefix}{name}", kind, model_dir, model_cfg, cfg.learner, cfg.grpo, cfg.run.seed, shared.storage,
        shared.images, shared.pool, reward_objective(cfg) if kind is LearnerModel.REWARD else None, cfg.graded,
        cfg.solver.augment, cfg.solver.augmentation, cfg.learner.checkpoint_every, cfg.learner.max_failures,
        cfg.run.torch_threads)
    lc = cfg.learner
    return LearnerHost(spec, lc.num_ranks, lc.num_cpus_per_rank, lc.num_gpus_per_rank, fresh=fresh)


def _named(pinned: list[Any], cls: type, name: str, *args: Any, **options: Any) -> Any:
    """A named, CPU-free actor that Ray restarts when it dies (its state comes back as each class says).

    Its constructor arguments go through the object store, and their refs go into `pinned`, which the
    system keeps for its lifetime: Ray frees an actor's stored arguments once it is created, after which
    a restart could not rebuild it (ray-project/ray#53727; the kept-sample store hit this)."""
    refs = [ray.put(a) for a in args]
    pinned.extend(refs)
    return ray.remote(cls).options(name=name, num_cpus=0, max_restarts=-1, **options).remote(*refs)


def rollout_buffer(shared: Shared) -> Any:
    """The run's `RolloutBuffer` actor (its put and take spans go to the monitor). Calls run in the order
    their arguments are ready: a put chained on a score still running must not hold up the calls behind
    it (another chain's put, a take, the controller's `ready`, `save` or `queued_ids`)."""
    cfg = shared.cfg
    return _named(shared.pinned, RolloutBuffer, f"{shared.prefix}RolloutBuffer", cfg.grpo.buffer_size,
                  cfg.grpo.dynamic_sampling, shared.monitor, allow_out_of_order_execution=True)


@dataclass
class ActorSystem:
    """Handles on every actor of a run (see the module docstring)."""

    rollout: WorkerPool  # the policy pool (P engines)
    scorer: WorkerPool
    learner: LearnerHost  # P
    buffer: Any  # ActorHandle[RolloutBuffer]
    monitor: Any  # ActorHandle[LoopMonitor]
    generator: WorkerPool | None = None
    g_learner: LearnerHost | None = None
    r_learner: LearnerHost | None = None
    store: Any = None  # ActorHandle[KeptStore]
    pinned: list[Any] = field(default_factory=list)  # constructor-argument refs kept for Ray's restarts

    @staticmethod
    def shared(cfg: Config, prefix: str, storage: str | Path | None, images: dict[str, Any] | None = None,
               pool: dict[str, MedImage] | None = None) -> Shared:
        """The monitor (started here) and what the actors share."""
        pinned: list[Any] = []
        monitor = _named(pinned, LoopMonitor, f"{prefix}{MONITOR_NAME}")
        where = str(storage) if storage is not None else tempfile.mkdtemp(prefix="medgr2-train-")
        return Shared(cfg, prefix, where, monitor, dict(images or {}), dict(pool or {}), pinned)

    @classmethod
    def build(cls, cfg: Config, policy_dir: str | Path, reward_dir: str | Path | None = None,
              prefix: str = "", storage: str | Path | None = None, images: dict[str, Any] | None = None
              ) -> "ActorSystem":
        """A bare GRPO loop: the policy and scorer pools at `min_workers`, P's learner, buffer, monitor
        (`images`: pixels refs for requests that name their images by id)."""
        shared = cls.shared(cfg, prefix, storage, images)
        reward = str(reward_dir) if reward_dir is not None and cfg.reward.alpha > 0 else None
        system = cls(
            rollout=rollout_pool(shared, "policy-rollout", str(policy_dir), cfg.policy, 1000, cfg.rollout_pool),
            scorer=scorer_pool(shared, reward, None),
            learner=learner(shared, "PolicyLearner", LearnerModel.POLICY, str(policy_dir), cfg.policy),
            buffer=rollout_buffer(shared),
            monitor=shared.monitor, pinned=shared.pinned)
        system.rollout.scale_to(cfg.rollout_pool.min_workers)
        system.scorer.scale_to(cfg.scorer_pool.min_workers)
        return system

    @classmethod
    def build_flywheel(cls, shared: Shared, dirs: ModelDirs, store: StoreSpec, resume: bool = False) -> "ActorSystem":
        """The whole cycle's actors (see the module docstring); the policy pool starts empty (GRPO scales it).
        `resume`: the learners continue from their feeds' saved state and newest checkpoints."""
        cfg, prefix, fresh = shared.cfg, shared.prefix, not resume
        system = cls(
            rollout=rollout_pool(shared, "policy-rollout", dirs.policy, cfg.policy, 1000, cfg.rollout_pool),
            scorer=scorer_pool(shared, dirs.reward_model, reward_objective(cfg)),
            learner=learner(shared, "PolicyLearner", LearnerModel.POLICY, dirs.policy, cfg.policy, fresh),
            buffer=rollout_buffer(shared),
            monitor=shared.monitor,
            generator=rollout_pool(shared, "generator-rollout", dirs.generator, cfg.generator, 7919,
                                   cfg.generator_pool),
            g_learner=learner(shared, "GeneratorLearner", LearnerModel.POLICY, dirs.generator, cfg.generator, fresh),
            r_learner=learner(shared, "RewardLearner", LearnerModel.REWARD, dirs.reward_model, cfg.reward_model,
                              fresh),
            store=_named(shared.pinned, KeptStore, f"{prefix}KeptStore", store, max_task_retries=0),
            pinned=shared.pinned)
        system.generator.scale_to(cfg.generator_pool.min_workers)  # type: ignore[union-attr]
        system.scorer.scale_to(cfg.scorer_pool.min_workers)
        return system

    def learners(self) -> list[LearnerHost]:
        """Every learner of the system."""
        return [h for h in (self.g_learner, self.r_learner, self.learner) if h is not None]

    def shutdown(self) -> None:
        """Stop every actor: the pools, the learners (their train loops end), store, buffer, monitor."""
        for pool in (self.generator, self.scorer, self.rollout):
            if pool is not None:
                pool.shutdown()
        for host in self.learners():
            try:
                host.stop()
            except Exception:  # a learner that already failed must not keep the others running
                ray.kill(host.feed)
        for handle in (self.store, self.buffer, self.monitor):
            if handle is not None:
                ray.kill(handle)
        self.pinned.clear()
