"""Solver stage 1: supervised fine-tuning on the selected samples with Ray Train's `TorchTrainer`.

Each Ray Train worker builds a `PolicyLearner` for its rank (Ray Train sets up the torch.distributed
group: gloo on CPU, NCCL on GPU; DeepSpeed ZeRO through `learner.strategy`), takes its shard of every
global batch, and steps. Checkpoints are the learner's exact, pickle-free ones (weights, optimizer,
schedule, step, RNG) reported to Ray Train, so `resume` continues the same step sequence. Rank 0 writes
the trained policy as an ordinary HF directory for the GRPO stage and the evaluation.

Batches are drawn by a seeded generator that depends only on (seed, step): a resumed run draws the
same batches as an uninterrupted one. Images are augmented per (seed, step, rank) for the same reason.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgr2_ray.config import Config

STATE_DIR = "learner"  # inside a Ray Train checkpoint
REPORT_EVERY = 10  # steps per reported loss (the window mean)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class SFTRunResult:
    """Where the trained solver is and how training went."""

    model_dir: Path
    steps: int
    losses: tuple[float, ...]


def balanced_weights(modalities: Sequence[str]) -> list[float]:
    """Sampling weights that give every modality the same share of the batches (the pool is dominated
    by a few large studies; unweighted sampling teaches the solver a modality prior, not the images)."""
    counts = Counter(modalities)
    raw = [1.0 / counts[m] for m in modalities]
    total = sum(raw)
    return [w / total for w in raw]


def batch_indices(weights: Sequence[float], batch: int, seed: int, step: int) -> list[int]:
    """The global batch of one step: depends only on (seed, step), so a resumed run draws the same."""
    rng = random.Random(f"{seed}|sft|{step}")
    return rng.choices(range(len(weights)), weights=weights, k=batch)


def _train_loop(config: dict[str, Any]) -> None:  # runs inside each Ray Train worker
    import numpy as np
    import ray.train
    import torch

    from medgr2_ray.data.store import read_rgb, sample_from_dict
    from medgr2_ray.learner.policy import PolicyLearner
    from medgr2_ray.loop.stages import solver_sft_examples

    torch.set_num_threads(config["threads"])
    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # The device is the local rank's (cuda:<local rank> among the node's GPUs Ray Train made visible): the
    # world rank names a GPU that does not exist on the second and later nodes.
    learner = PolicyLearner(config["model_dir"], cfg.policy, cfg.learner, cfg.grpo, cfg.run.seed, rank, world,
                            local_rank=ctx.get_local_rank())
    samples = [sample_from_dict(d) for d in config["samples"]]
    weights = balanced_weights([s.modality.value for s in samples])
    paths = {s.image_id: s.image_path for s in samples}
    cache: dict[str, np.ndarray] = {}

    def lookup(image_id: str) -> np.ndarray:
        if image_id not in cache:
            cache[image_id] = read_rgb(paths[image_id])
        return cache[image_id]

    step = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            step = int(learner.load_checkpoint(Path(d) / STATE_DIR)["step"])
    window: list[float] = []
    while step < config["steps"]:
        idx = batch_indices(weights, config["batch"], cfg.run.seed, step)[rank::world]
        rng = np.random.default_rng([cfg.run.seed, step, rank]) if config["augment"] else None
        metrics = learner.sft_step(solver_sft_examples([samples[i] for i in idx], lookup, rng,
                                                       cfg.solver.augmentation))
        window.append(float(metrics.get("loss", float("nan"))))
        step += 1
        last = step == config["steps"]
        # Report a window mean every `report_every` steps: a report per step floods the driver's log.
        if step % config["report_every"] == 0 or last:
            report = {"step": step, "loss": float(np.nanmean(window))}
            window = []
            if step % config["checkpoint_every"] == 0 or last:
                with tempfile.TemporaryDirectory() as tmp:
                    learner.save_checkpoint(Path(tmp) / STATE_DIR, extra={"step": step})
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(report)
    learner.save_pretrained(config["out_dir"])


def run_solver_sft(cfg: Config, model_dir: Path, samples: Sequence[Any], run_dir: Path, steps: int,
                   batch_size: int, augment: bool, resume: bool = False) -> SFTRunResult:
    """SFT the policy at `model_dir` on `samples` with Ray Train; returns the trained model directory."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from medgr2_ray.data.store import sample_to_dict

    out_dir = run_dir / "models" / "solver_sft"
    storage = (run_dir / "ray_train").resolve()
    if not resume and (storage / "solver_sft").exists():
        # Ray Train loads any snapshot it finds under the same RunConfig name, resume or not: a new run in
        # an old run directory would silently continue the old run's SFT (trained on other data).
        shutil.rmtree(storage / "solver_sft")
    use_gpu = cfg.learner.num_gpus_per_rank > 0
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"), "model_dir": str(model_dir), "samples": [sample_to_dict(s) for s in samples],
            "steps": steps, "batch": batch_size, "augment": augment, "out_dir": str(out_dir),
            "threads": cfg.run.torch_threads, "report_every": REPORT_EVERY,
            # checkpoints land on report steps; 0 means only at the end
            "checkpoint_every": _round_up(cfg.loop.checkpoint_every or steps, REPORT_EVERY),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.learner.num_ranks, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.learner.num_cpus_per_rank, **({"GPU": cfg.learner.num_gpus_per_rank} if use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="solver_sft", storage_path=str(storage), checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    if resume and (storage / "solver_sft").exists() and TorchTrainer.can_restore(str(storage / "solver_sft")):
        trainer = TorchTrainer.restore(str(storage / "solver_sft"), train_loop_per_worker=_train_loop)
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"solver SFT failed: {result.error}") from result.error
    history = result.metrics_dataframe
    losses = tuple(float(x) for x in history["loss"]) if history is not None and "loss" in history else ()
    (run_dir / "models").mkdir(exist_ok=True)
    (run_dir / "models" / "solver_sft.json").write_text(json.dumps({"steps": steps, "losses": losses}))
    return SFTRunResult(out_dir, steps, losses)
