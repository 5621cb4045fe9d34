"""LearnerActor ranks and the LearnerGroup that packs them: data-parallel GRPO/SFT on the policy.

A `LearnerGroup` reserves one bundle per rank in a placement group (PACK: ranks share a node when they
fit, so gloo/NCCL traffic stays local), starts one `LearnerActor` per bundle, and joins them in one
torch.distributed process group (gloo on CPU, NCCL on GPU) before any of them builds its
`learner.PolicyLearner`. Every step goes to all ranks with the *same* `TakeResult` object ref; rank r
trains on groups r, r+W, r+2W, ... and the learner all-reduces gradients, so the ranks stay identical.
Rank 0 then publishes the new weights once through the object store (`sync.weights.publish_weights`)
and reports a `StepReport` with the ids of the groups trained, so the controller can prove that no
sample was lost or trained twice.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from medgr2_ray.actors.info import actor_info, limit_threads
from medgr2_ray.config import GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.metrics import LEARNER_STEP_S, LEARNER_VERSION, REWARD_MEAN, SAMPLES_TRAINED, STALENESS, Metrics
from medgr2_ray.sync.weights import publish_weights
from medgr2_ray.types import SFTExample, WeightVersion
from medgr2_ray.messages import ActorInfo, Rendezvous, StepReport, TakeResult






class LearnerActor:
    """One data-parallel rank of the policy learner (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, torch_threads: int = 1) -> None:
        limit_threads(torch_threads)
        self.rank, self.world_size = rank, world_size
        self.learner: Any = None  # built in `setup`, after the process group exists
        self.metrics = Metrics()

    def ready(self) -> ActorInfo:
        """Liveness probe."""
        return actor_info(self.learner.version if self.learner is not None else 0)

    def rendezvous(self) -> Rendezvous:
        """A free port on this node for rank 0 to host the process group."""
        host = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind(("", 0))
            return Rendezvous(host, int(sock.getsockname()[1]))

    def setup(
        self, where: Rendezvous, model_dir: str, model_cfg: ModelConfig, learner_cfg: LearnerConfig,
        grpo_cfg: GRPOConfig, seed: int, use_gpu: bool,
    ) -> int:
        """Join the process group (if more than one rank) and build the learner; returns its version."""
        import torch.distributed as dist

        from medgr2_ray.learner.policy import PolicyLearner

        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if use_gpu else "gloo", init_method=f"tcp://{where.host}:{where.port}",
                rank=self.rank, world_size=self.world_size,
            )
        # Ray sets CUDA_VISIBLE_DEVICES to this rank's GPU, so its local index is always 0.
        self.learner = PolicyLearner(
            model_dir, model_cfg, learner_cfg, grpo_cfg, seed, self.rank, self.world_size, local_rank=0
        )
        return int(self.learner.version)

    def grpo_step(self, take: TakeResult) -> StepReport:
        """One GRPO step on this rank's share of the batch; rank 0 publishes the new weights."""
        start = time.perf_counter()
        before = int(self.learner.version)
        mine = take.batch.groups[self.rank :: self.world_size]
        metrics = self.learner.grpo_step(list(mine))
        after = int(self.learner.version)
        weights = None
        # Every rank exports (a collective under ZeRO-3; all ranks agree on whether the step ran), and
        # rank 0, the only one that gets the weights, publishes them.
        flat = self.learner.export_weights() if after != before else None
        if self.rank == 0:
            if flat is not None:
                weights = publish_weights(flat, after, self.metrics)
            self._record(take, metrics, time.perf_counter() - start, after)
        return StepReport(
            self.rank, before, after, tuple(g.group_id for g in mine), tuple(g.weight_version for g in mine),
            take.dropped_stale_ids, {k: float(v) for k, v in metrics.items()}, time.perf_counter() - start, weights,
            take.snapshot,
        )

    def _record(self, take: TakeResult, metrics: dict[str, float], seconds: float, version: int) -> None:
        for group in take.batch.groups:
            self.metrics.record(STALENESS, take.batch.learner_version - group.weight_version)
        self.metrics.record(SAMPLES_TRAINED, sum(len(g.rollouts) for g in take.batch.groups))
        self.metrics.record(REWARD_MEAN, metrics.get("reward_mean", float("nan")), stage="trained")
        self.metrics.record(LEARNER_STEP_S, seconds)
        self.metrics.record(LEARNER_VERSION, version)

    def sft_step(self, examples: list[SFTExample]) -> dict[str, float]:
        """One SFT step on this rank's share of `examples` (all ranks get the same list)."""
        return self.learner.sft_step(examples[self.rank :: self.world_size])

    def publish(self) -> WeightVersion | None:
        """Export on every rank (all ranks call this together: a collective under ZeRO-3); rank 0
        publishes and returns the version rollout actors should load, the other ranks return None."""
        flat = self.learner.export_weights()
        if flat is None:
            return None
        return publish_weights(flat, int(self.learner.version), self.metrics)

    def save_checkpoint(self, directory: str, extra: dict[str, Any]) -> str:
        """Exact checkpoint (weights, optimizer, schedule, version, RNG); all ranks call it together."""
        return str(self.learner.save_checkpoint(directory, extra))

    def load_checkpoint(self, directory: str) -> dict[str, Any]:
        """Restore a checkpoint written by `save_checkpoint`; returns its `extra`."""
        return self.learner.load_checkpoint(directory)

    def save_pretrained(self, directory: str) -> str:
        """The policy as a Hugging Face directory (LoRA merged): the next stage's starting point."""
        return str(self.learner.save_pretrained(directory))

    def export_state_numpy(self) -> dict[str, Any]:
        """The trainable weights as numpy arrays (tests compare runs with it)."""
        return {k: v.detach().cpu().numpy() for k, v in self.learner.trainable_parameters().items()}


class LearnerGroup:
    """Driver-side handle on the learner ranks (see the module docstring)."""

    def __init__(
        self, model_dir: str | Path, model_cfg: ModelConfig, learner_cfg: LearnerConfig, grpo_cfg: GRPOConfig,
        seed: int, name: str = "PolicyLearner", torch_threads: int = 1,
    ) -> None:
        n, gpus = learner_cfg.num_ranks, learner_cfg.num_gpus_per_rank
        bundle = {"CPU": learner_cfg.num_cpus_per_rank, **({"GPU": gpus} if gpus > 0 else {})}
        self.pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK", name=f"{name}-pg")
        ray.get(self.pg.ready(), timeout=600)
        self.ranks = [
            ray.remote(LearnerActor).options(
                name=f"{name}-rank{r}", num_cpus=learner_cfg.num_cpus_per_rank, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
            ).remote(r, n, torch_threads)
            for r in range(n)
        ]
        where = ray.get(self.ranks[0].rendezvous.remote())
        versions = ray.get([
            a.setup.remote(where, str(model_dir), model_cfg, learner_cfg, grpo_cfg, seed, gpus > 0) for a in self.ranks
        ])
        self.version = versions[0]

    def grpo_step(self, take_ref: Any) -> list[Any]:
        """Start one GRPO step on every rank; returns their `StepReport` refs (rank order)."""
        return [a.grpo_step.remote(take_ref) for a in self.ranks]

    def sft_step(self, examples: list[SFTExample]) -> dict[str, float]:
        """One synchronous SFT step over all ranks; rank 0's (globally reduced) metrics."""
        ref = ray.put(examples)
        return ray.get([a.sft_step.remote(ref) for a in self.ranks])[0]

    def save_pretrained(self, directory: str | Path) -> str:
        """All ranks take part (ZeRO-3 gathers); rank 0 writes the HF directory."""
        return ray.get([a.save_pretrained.remote(str(directory)) for a in self.ranks])[0]

    def weights_numpy(self) -> dict[str, Any]:
        """Rank 0's trainable weights as numpy (to compare runs)."""
        return ray.get(self.ranks[0].export_state_numpy.remote())

    def publish(self) -> WeightVersion:
        """All ranks export together (ZeRO-3 gathers); rank 0's published version."""
        return ray.get([a.publish.remote() for a in self.ranks])[0]

    def save_checkpoint(self, directory: str | Path, extra: dict[str, Any]) -> str:
        """All ranks write one checkpoint directory together."""
        return ray.get([a.save_checkpoint.remote(str(directory), extra) for a in self.ranks])[0]

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        """All ranks restore; returns the saved `extra` and updates `version`."""
        extra = ray.get([a.load_checkpoint.remote(str(directory)) for a in self.ranks])[0]
        self.version = ray.get(self.ranks[0].ready.remote()).weight_version
        return extra

    def shutdown(self) -> None:
        """Stop the ranks and free their placement group."""
        for actor in self.ranks:
            ray.kill(actor)
        remove_placement_group(self.pg)
