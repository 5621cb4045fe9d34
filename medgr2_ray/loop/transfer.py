"""Med-R1's cross-modality and cross-task protocols on Ray: one task per matrix row.

Each row (and the untrained baseline) is a Ray task that builds a fresh solver from the policy's
initial weights, fine-tunes it on the row's training questions, and scores it on every held-out
question (`eval/transfer.py` says what the rows, columns and questions are, and why). Tasks ask for a
learner rank's resources, so on a GPU cluster each row takes a GPU and rows run side by side; the driver
never loads a model. Results go to `runs/<name>/eval/transfer_<protocol>.{json,md}`, which the report
draws as a heat map.

The training and scoring functions (`new_solver`, `sft_solver`, `predict`, `run_row`) need no Ray:
call them in one process to SFT and score a `PolicyLearner` the way the protocol does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgr2_ray.config import AugmentConfig, Config
from medgr2_ray.eval.transfer import (BASELINE, RowResult, TransferMatrix, assemble, cells_by_group, check_protocol,
                                      markdown, spec_from_config, to_json)
from medgr2_ray.types import Sample

if TYPE_CHECKING:
    from medgr2_ray.learner.policy import PolicyLearner
    from medgr2_ray.loop.cycle import CycleData

ImageLookup = Callable[[str], np.ndarray]  # image_id -> RGB uint8
Progress = Callable[[str, int, int], None]  # (stage, done, total), as the cycle's


def new_solver(cfg: Config, model_dir: str | Path, steps: int) -> PolicyLearner:
    """A fresh solver from the weights at `model_dir`, its learning-rate schedule sized to `steps`."""
    from medgr2_ray.learner.policy import PolicyLearner

    learner_cfg = cfg.learner.model_copy(update={"schedule_steps": max(1, steps)})
    return PolicyLearner(model_dir, cfg.policy, learner_cfg, cfg.grpo, cfg.run.seed)


def sft_solver(learner: PolicyLearner, train: Sequence[Sample], lookup: ImageLookup, steps: int, batch: int,
               seed: int, augment: bool, augmentation: AugmentConfig | None = None) -> list[float]:
    """`steps` SFT steps on batches balanced over (modality, task); returns every step's loss.

    Batches depend only on (seed, step), as in the solver stage (`solver_sft.batch_indices`)."""
    from medgr2_ray.loop.solver_sft import balanced_weights, batch_indices
    from medgr2_ray.loop.stages import solver_sft_examples

    weights = balanced_weights([f"{s.modality.value}|{s.task_type.value}" for s in train])
    losses = []
    for step in range(steps):
        idx = batch_indices(weights, batch, seed, step)
        rng = np.random.default_rng([seed, step]) if augment else None
        metrics = learner.sft_step(solver_sft_examples([train[i] for i in idx], lookup, rng, augmentation))
        losses.append(float(metrics.get("loss", float("nan"))))
    return losses


def predict(learner: PolicyLearner, cfg: Config, test: Sequence[Sample], lookup: ImageLookup, greedy: bool
            ) -> tuple[list[str], list[str] | None]:
    """Each question's option by length-normalised likelihood, and by greedy decoding when asked
    ('' where the decoded text names no option)."""
    from medgr2_ray.algo.rewards import extract_answer
    from medgr2_ray.eval.protocols import choose_by_likelihood
    from medgr2_ray.loop.stages import solver_requests
    from medgr2_ray.types import SamplingParams

    requests = solver_requests(test, lookup)
    likely = choose_by_likelihood(learner, test, requests)
    if not greedy:
        return likely, None
    from medgr2_ray.engines.hf import HFEngine

    engine = HFEngine(learner.loaded.path, cfg.policy, cfg.engine, seed=cfg.run.seed)
    engine.load_weights(learner.export_weights(), learner.version)
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.grpo.max_new_tokens)
    texts = {r.request_id: r.text for r in engine.generate(requests, sampling)}
    return likely, [extract_answer(texts[r.request_id], s.options) or "" for r, s in zip(requests, test)]


def run_row(cfg: Config, model_dir: str | Path, protocol: str, row: str, train: Sequence[Sample],
            test: Sequence[Sample], lookup: ImageLookup, steps: int, greedy: bool) -> RowResult:
    """Fine-tune a fresh solver on `train` (no steps for the untrained baseline: empty `train`) and
    score it on every held-out question, grouped into the protocol's columns."""
    learner = new_solver(cfg, model_dir, steps)
    losses = sft_solver(learner, train, lookup, steps, cfg.solver.sft_batch_size, cfg.run.seed,
                        cfg.solver.augment, cfg.solver.augmentation) if train else []
    likely, greedy_picks = predict(learner, cfg, test, lookup, greedy)
    final = float(np.nanmean(losses[-10:])) if losses else float("nan")
    return RowResult(row, len(train), len(losses), final, cells_by_group(protocol, test, likely, greedy_picks))


def _row_task(cfg_json: dict[str, Any], model_dir: str, protocol: str, row: str, train: list[Sample],
              test: list[Sample], steps: int, greedy: bool) -> tuple[RowResult, float]:
    import torch

    from medgr2_ray.data.store import read_rgb

    start = time.perf_counter()
    cfg = Config.model_validate(cfg_json)
    torch.set_num_threads(cfg.run.torch_threads)
    paths = {s.image_id: s.image_path for s in (*train, *test)}
    cache: dict[str, np.ndarray] = {}

    def lookup(image_id: str) -> np.ndarray:
        if image_id not in cache:
            cache[image_id] = read_rgb(paths[image_id])
        return cache[image_id]

    result = run_row(cfg, model_dir, protocol, row, train, test, lookup, steps, greedy)
    return result, time.perf_counter() - start


def run_transfer(cfg: Config, data: CycleData, model_dir: Path, run_dir: Path, protocol: str,
                 steps: int | None = None, progress: Progress | None = None) -> TransferMatrix:
    """Run one protocol on the run's split (Ray must be initialised); writes its JSON and markdown."""
    import ray

    check_protocol(protocol)
    steps = cfg.eval.transfer_steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"{protocol}: steps must be >= 1 (eval.transfer_steps / --steps), got {steps}")
    start = time.perf_counter()
    spec = spec_from_config(cfg, protocol, data.train, data.test, data.test_samples)
    task = ray.remote(_row_task).options(num_cpus=cfg.learner.num_cpus_per_rank,
                                         num_gpus=cfg.learner.num_gpus_per_rank, max_retries=1)
    cfg_json, test = cfg.model_dump(mode="json"), list(spec.test)
    jobs = {task.remote(cfg_json, str(model_dir), protocol, row, list(spec.train.get(row, ())), test, steps,
                        cfg.eval.transfer_greedy): row for row in (BASELINE, *spec.rows)}
    stage = f"transfer: {protocol}"
    results: list[RowResult] = []
    seconds: dict[str, float] = {}
    pending = list(jobs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        result, took = ray.get(done[0])
        results.append(result)
        seconds[result.row] = took
        if progress is not None:
            progress(stage, len(results), len(jobs))
    matrix = assemble(spec, results, steps)
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    record = to_json(matrix, time.perf_counter() - start)
    record["row_seconds"] = seconds
    record["final_loss"] = {r.row: r.final_loss for r in results if r.row != BASELINE}
    (out / f"transfer_{protocol}.json").write_text(json.dumps(record, indent=1))
    (out / f"transfer_{protocol}.md").write_text(markdown(matrix))
    return matrix


def run_configured_transfers(cfg: Config, data: CycleData, run_dir: Path, progress: Progress | None = None
                             ) -> dict[str, TransferMatrix]:
    """Every protocol in `eval.transfer_protocols` (none by default), from the untrained policy."""
    if not cfg.eval.transfer_protocols:
        return {}
    from medgr2_ray.models.tiny import ensure_model_dir

    model_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, cfg.run.seed, "policy")
    return {p: run_transfer(cfg, data, model_dir, run_dir, p, progress=progress) for p in cfg.eval.transfer_protocols}
