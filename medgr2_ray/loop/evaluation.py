"""Solver evaluation as a Ray task: option likelihood (length-normalised) and strict greedy exact match.

A task, not driver code, so the driver never loads a model (on a GPU cluster the task asks for the
learner's GPU) and a crash in evaluation never takes the run down with it. The result is written to
`runs/<name>/eval/<point>.json` and logged, so the report shows accuracy before and after each stage.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from medgr2_ray.config import Config
from medgr2_ray.eval.protocols import EvalResult, accuracy_table, choose_by_likelihood
from medgr2_ray.types import SamplingParams


def _evaluate(cfg_json: dict[str, Any], model_dir: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from medgr2_ray.algo.rewards import extract_answer
    from medgr2_ray.data.images import ImageCache
    from medgr2_ray.data.store import sample_from_dict
    from medgr2_ray.engines.hf import HFEngine
    from medgr2_ray.algo.requests import solver_requests
    from medgr2_ray.learner.inference import PolicyScorer

    began = time.time()  # the task's own times go on the timeline: the driver collects it much later
    cfg = Config.model_validate(cfg_json)
    torch.set_num_threads(cfg.run.torch_threads)
    test = [sample_from_dict(s) for s in samples]
    requests = solver_requests(test, ImageCache.of_samples(test))
    # Inference only: no optimizer, no strategy, no LoRA wrapper (the directory is whole), no autograd.
    scorer = PolicyScorer(model_dir, cfg.policy, cfg.learner.micro_batch_size)
    likelihood = accuracy_table(test, choose_by_likelihood(scorer, test, requests))
    del scorer
    engine = HFEngine(model_dir, cfg.policy, cfg.engine, seed=cfg.run.seed)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.grpo.max_new_tokens)
    texts = {r.request_id: r.text for r in engine.generate(requests, greedy)}
    picked = [extract_answer(texts[r.request_id], s.options) or "" for r, s in zip(requests, test)]
    strict = accuracy_table(test, picked)
    return {**asdict(likelihood), "greedy_accuracy": strict.accuracy, "greedy_by_modality": strict.by_modality,
            "started_at": began, "ended_at": time.time()}


def start_evaluation(cfg: Config, model_dir: Path, samples: list[Any]) -> Any:
    """Start evaluating the solver at `model_dir` on `samples` as a Ray task; returns its ref (the run
    goes on meanwhile: the task asks for a learner rank's resources, as any other model process)."""
    from medgr2_ray.data.store import sample_to_dict

    task = ray.remote(_evaluate).options(
        num_cpus=cfg.learner.num_cpus_per_rank, num_gpus=cfg.learner.num_gpus_per_rank, max_retries=1,
    )
    return task.remote(cfg.model_dump(mode="json"), str(model_dir), [sample_to_dict(s) for s in samples])


def finish_evaluation(ref: Any, run_dir: Path, point: str) -> EvalResult:
    """Wait for an evaluation; writes `eval/<point>.json`; returns the result."""
    result = ray.get(ref)
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{point}.json").write_text(json.dumps(result, indent=1))
    fields = {k: result[k] for k in EvalResult.__dataclass_fields__}
    return EvalResult(**fields)


def evaluate_solver(cfg: Config, model_dir: Path, samples: list[Any], run_dir: Path, point: str) -> EvalResult:
    """Evaluate the solver at `model_dir` on `samples`; writes `eval/<point>.json`; returns the result."""
    return finish_evaluation(start_evaluation(cfg, model_dir, samples), run_dir, point)
