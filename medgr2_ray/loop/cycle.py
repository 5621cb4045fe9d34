"""The whole MedGR² cycle on Ray, stage by stage: what `medgr2 run` and the Ray job entrypoint execute.

1. data: the configured image pool, split by study into train and held-out test (never by slice);
   template seeds from the train images; a test set balanced by modality from the held-out studies.
2. rounds (`rounds.CoEvolution`): round 0 bootstraps G and R from the seeds; rounds 1..N generate,
   score, select, refresh R and fine-tune G. Every sample is kept with provenance in `data/round_k/`.
3. solver stage 1: SFT on the selected samples (+ seeds) with Ray Train (`solver_sft.py`).
4. solver stage 2: GRPO on the continuous asynchronous loop (`controller.Controller`) with the reward
   alpha * norm(R) + beta * accuracy, scored by the ScorerActor pool holding the evolved R.
5. evaluation before and after each solver stage, and the HTML report.
Ablations are configuration: `selection.mode=random`, `cycle.rm_retrain=false`, `solver.grpo=false`,
`reward.alpha=0`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgr2_ray.config import Config, ModelConfig, dump_config
from medgr2_ray.data.seedpool import load_configured_pool
from medgr2_ray.data.split import split_by_study
from medgr2_ray.data.store import ImagePool, write_samples
from medgr2_ray.data.templates import make_template_samples
from medgr2_ray.eval.protocols import EvalResult, balanced_modality_test, modality_question
from medgr2_ray.eval.report import build_report
from medgr2_ray.loop.evaluation import evaluate_solver
from medgr2_ray.loop.round_state import (check_resumable, clear_final, completed_data, completed_rounds,
                                         final_reward_dir, forget_rounds, rounds_fingerprint, write_final)
from medgr2_ray.loop.rounds import CoEvolution, Progress
from medgr2_ray.loop.solver_sft import run_solver_sft
from medgr2_ray.loop.transfer import run_configured_transfers
from medgr2_ray.metrics import RunLog
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.timeline import Timeline
from medgr2_ray.types import MedImage, Modality, Sample, TaskType


@dataclass(frozen=True)
class CycleData:
    """The images and samples a run works on."""

    pool: ImagePool
    train: list[MedImage]
    test: list[MedImage]
    seeds: list[Sample]
    test_samples: list[Sample]


@dataclass(frozen=True)
class CycleResult:
    """Where the run went and what it measured."""

    run_dir: Path
    evals: dict[str, EvalResult]
    report: Path
    seconds: float


def prepare_data(cfg: Config) -> CycleData:
    """Pool, study split, seeds (modality questions over the pool's modalities + anatomy templates),
    and the modality-balanced held-out test set."""
    pool = load_configured_pool(cfg.data.pool, cfg.data.cache_dir)
    train, test = split_by_study(pool.images, cfg.data.test_fraction, cfg.run.seed)
    modalities = sorted({i.modality for i in pool.images if i.modality != Modality.OTHER}, key=lambda m: m.value)
    seeds = [q for image in train for k in range(cfg.cycle.seeds_per_image)
             if (q := modality_question(image, modalities, cfg.run.seed, k)) is not None]
    if TaskType.ANATOMY.value in cfg.cycle.tasks:
        seeds += make_template_samples(train, cfg.run.seed, tasks=[TaskType.ANATOMY], per_image=cfg.cycle.seeds_per_image,
                                       inline_options=False)
    # Test distractors come from the test set's own modalities: no option is wrong a priori, so an
    # image-blind ordering stays near chance (the reported blind bound says how near).
    test_modalities = sorted({i.modality for i in test if i.modality != Modality.OTHER}, key=lambda m: m.value)
    test_samples = balanced_modality_test(
        test, lambda image, k: modality_question(image, test_modalities, cfg.run.seed + 1, k),
        cfg.solver.eval_per_modality, cfg.run.seed)
    return CycleData(pool, train, test, seeds, test_samples)


def _pixels(pool: ImagePool) -> Callable[[str], np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    by_id = {i.image_id: i for i in pool.images}

    def lookup(image_id: str) -> np.ndarray:
        if image_id not in cache:
            cache[image_id] = pool.read_rgb(by_id[image_id])
        return cache[image_id]

    return lookup


def with_absolute_paths(cfg: Config) -> Config:
    """The config with its run root, cache and pool as absolute paths: actors and Ray Train workers do
    not share the driver's working directory, so a relative path would name nothing (or a hub id)."""
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    def model(section: ModelConfig) -> ModelConfig:
        local = section.path is not None and Path(section.path).expanduser().exists()
        return section.model_copy(update={"path": absolute(section.path)}) if local else section

    run = cfg.run.model_copy(update={"root": absolute(cfg.run.root)})
    data = cfg.data.model_copy(update={"cache_dir": absolute(cfg.data.cache_dir),
                                       "pool": absolute(cfg.data.pool) if cfg.data.pool else None,
                                       "test_sets": [absolute(t) for t in cfg.data.test_sets]})
    return cfg.model_copy(update={"run": run, "data": data, "policy": model(cfg.policy),
                                  "generator": model(cfg.generator), "reward_model": model(cfg.reward_model)})


def _run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.run.root) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir


def run_rounds(cfg: Config, data: CycleData, run_dir: Path, log: RunLog, progress: Progress,
               resume: bool = False, timeline: Timeline | None = None) -> tuple[list[Sample], Path]:
    """Round 0 and rounds 1..N; returns every kept generated sample and R's directory.

    Each round ends with checkpoints of G and R and `data/round_k/DONE.json` (see `round_state.py`).
    With `resume`, complete rounds are skipped: G and R come back from the last one's checkpoints and
    the rounds after it run; a round without DONE is redone from its start in an emptied directory;
    when every round is complete and R's directory was written after the last one, nothing is rebuilt.
    A config that changes what the rounds produce is refused with the differing fields named.
    Without `resume` (as before resume existed) the rounds start over from round 0 in the same run
    directory: every DONE.json is removed first, and each round's directory is replaced when that round
    starts, so nothing is appended; an earlier run's round directories beyond `cycle.rounds` stay on
    disk but never count as complete.
    """
    fingerprint = rounds_fingerprint(cfg, [i.image_id for i in data.pool.images], [i.image_id for i in data.train])
    done = completed_rounds(run_dir) if resume else []
    check_resumable(done, fingerprint, cfg.cycle.rounds)
    if done and done[-1].round == cfg.cycle.rounds and (rm_ready := final_reward_dir(run_dir, done[-1])):
        progress("rounds: all complete (resumed)", len(done), len(done))
        return completed_data(run_dir, done)[0], rm_ready
    clear_final(run_dir)
    if not done:
        forget_rounds(run_dir)  # starting over: an earlier run's rounds here must never count as this run's
    cache = cfg.data.cache_dir
    evo = CoEvolution(cfg, ensure_model_dir(cfg.generator, cache, cfg.run.seed, "generator"),
                      ensure_model_dir(cfg.reward_model, cache, cfg.run.seed, "reward"),
                      {i.image_id: i for i in data.pool.images}, _pixels(data.pool), run_dir, log, progress, timeline)
    try:
        if done:
            evo.restore(done)
            progress("rounds: resumed after round", done[-1].round, cfg.cycle.rounds)
        else:
            evo.bootstrap(data.seeds)
            evo.complete_round(0, fingerprint)
        for k in range(len(done) or 1, cfg.cycle.rounds + 1):
            evo.run_round(k, data.train)
            evo.complete_round(k, fingerprint)
        rm_dir = evo.save(run_dir / "models" / "reward_model")
        (run_dir / "data" / "rounds.json").write_text(json.dumps(evo.state.summaries, indent=1))
        assert evo.state.last is not None  # complete_round ran at least for round 0
        write_final(run_dir, evo.state.last, rm_dir)
        return evo.state.kept, rm_dir
    finally:
        evo.shutdown()


def _external_tests(cfg: Config, model_dir: Path, run_dir: Path) -> dict[str, EvalResult]:
    """The OmniMedVQA-format test sets the config names, scored with the same protocol; a record that
    cannot be read is counted in `eval/<name>.errors.json`, never silently skipped."""
    from medgr2_ray.data.formats import read_omnimedvqa
    from medgr2_ray.data.store import RecordError

    out: dict[str, EvalResult] = {}
    for path in cfg.data.test_sets:
        errors: list[RecordError] = []
        samples = read_omnimedvqa(path, require_images=True, errors=errors)
        name = Path(path).stem
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / f"{name}.errors.json").write_text(json.dumps([str(e) for e in errors], indent=1))
        if samples:
            out[name] = evaluate_solver(cfg, model_dir, samples, run_dir, f"3_{name}")
    return out


def run_cycle(cfg: Config, progress: Progress, resume: bool = False) -> CycleResult:
    """Run every stage (see the module docstring); Ray must be initialised."""
    from medgr2_ray.loop.grpo_stage import run_grpo

    start = time.perf_counter()
    cfg = with_absolute_paths(cfg)
    run_dir = _run_dir(cfg)
    data = prepare_data(cfg)
    evals: dict[str, EvalResult] = {}
    tl = Timeline(run_dir, fresh=not resume)  # timeline.jsonl: which actor was busy when (report, summary)
    with RunLog(run_dir) as log:
        kept, rm_dir = run_rounds(cfg, data, run_dir, log, progress, resume, tl)
        policy_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, cfg.run.seed, "policy")
        with tl.span("evaluator", "evaluate"):
            evals["untrained"] = evaluate_solver(cfg, policy_dir, data.test_samples, run_dir, "0_untrained")
        train_set = kept + (data.seeds if cfg.solver.include_seeds else [])
        write_samples(run_dir / "data" / "solver_train.jsonl", train_set)
        with tl.span("P learner", "train_policy_sft"):
            sft = run_solver_sft(cfg, policy_dir, train_set, run_dir, cfg.solver.sft_steps, cfg.solver.sft_batch_size,
                                 cfg.solver.augment, resume=resume)
        for step, loss in sft.history:  # every reported window mean: the report draws the whole curve
            log.log(step, {"loss": loss}, "solver_sft")
        with tl.span("evaluator", "evaluate"):
            evals["after_sft"] = evaluate_solver(cfg, sft.model_dir, data.test_samples, run_dir, "1_after_sft")
        final = sft.model_dir
        if cfg.solver.grpo and cfg.grpo.steps > 0:
            with tl.span("P learner", "train_policy_grpo"):
                final = run_grpo(cfg, sft.model_dir, rm_dir, train_set, _pixels(data.pool), run_dir, progress, resume)
            with tl.span("evaluator", "evaluate"):
                evals["after_grpo"] = evaluate_solver(cfg, final, data.test_samples, run_dir, "2_after_grpo")
        evals.update(_external_tests(cfg, final, run_dir))
        run_configured_transfers(cfg, data, run_dir, progress)  # Med-R1 protocols, if eval.transfer_protocols
        for name, result in evals.items():
            log.log(0, {"accuracy": result.accuracy, "blind_bound": result.blind_bound}, f"eval_{name}")
    report = build_report(run_dir)
    return CycleResult(run_dir, evals, report, time.perf_counter() - start)
