"""Med-R1's cross-modality and cross-task protocols on Ray: one task per matrix row.

Each row (and the untrained baseline) is a Ray task that builds a fresh solver from the policy's
initial weights, fine-tunes it on the row's training questions, and scores it on every held-out
question (`eval/transfer.py` says what the rows, columns and questions are, and why). Tasks ask for a
learner rank's resources, so on a GPU cluster each row takes a GPU and rows run side by side; the driver
never loads a model. Results go to `runs/<name>/eval/transfer_<protocol>.{json,md}`, which the report
draws as a heat map.

The training and scoring of one row (`eval.transfer.run_row`, `learner.solver`) need no Ray: call them in
one process to SFT and score a `PolicyLearner` the way the protocol does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgr2_ray.config import Config
from medgr2_ray.eval.transfer import (BASELINE, RowResult, TransferMatrix, assemble, check_protocol,
                                      markdown, spec_from_config, to_json)
from medgr2_ray.types import Sample

if TYPE_CHECKING:
    from medgr2_ray.eval.rundata import CycleData

Progress = Callable[[str, int, int], None]  # (stage, done, total), as the cycle's


def _row_task(cfg_json: dict[str, Any], model_dir: str, protocol: str, row: str, train: list[Sample],
              test: list[Sample], steps: int, greedy: bool) -> tuple[RowResult, float]:
    import torch

    from medgr2_ray.data.images import ImageCache
    from medgr2_ray.eval.transfer import run_row

    start = time.perf_counter()
    cfg = Config.model_validate(cfg_json)
    torch.set_num_threads(cfg.run.torch_threads)
    lookup = ImageCache.of_samples((*train, *test))
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
