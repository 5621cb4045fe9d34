"""The whole MedGR² cycle on one actor system, built once and torn down once: what `medgr2 run` and the
Ray job entrypoint execute.

1. data: the configured image pool, split by study into train and held-out test (never by slice);
   template seeds from the train images; a test set balanced by modality from the held-out studies.
   Every image's pixels go into the object store once; actors read them from there.
2. the flywheel (`flywheel.Flywheel`): G and R bootstrap on the seeds, then generation -> scoring ->
   selection -> kept store turns while G fine-tunes on the kept stream, R refreshes, and the solver P
   trains SFT on the kept stream plus seeds (`cycle.mode=continuous`); or the paper's rounds followed by
   P's SFT (`cycle.mode=rounds`). Every candidate is kept with provenance under `data/`.
3. solver stage 2: GRPO on the asynchronous loop (`controller.Controller`) with the reward
   alpha * norm(R) + beta * accuracy, scored by the scorer pool holding R's newest weights, on kept
   questions P's SFT did not draw.
4. evaluation before and after each solver stage (Ray tasks that run beside the rest), the run's
   `timeline.jsonl`, and the HTML report.
Ablations are configuration: `selection.mode=random`, `cycle.rm_retrain=false`, `solver.grpo=false`,
`reward.alpha=0`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import ray

from medgr2_ray.actors.learner_host import feed_state_path
from medgr2_ray.actors.persist import read_json_state
from medgr2_ray.actors.store import StoreSpec
from medgr2_ray.actors.system import LEARNER_NAMES, ActorSystem, ModelDirs
from medgr2_ray.config import Config, ModelConfig, dump_config
from medgr2_ray.data.store import write_samples
from medgr2_ray.eval.protocols import EvalResult
from medgr2_ray.eval.report import build_report
from medgr2_ray.eval.rundata import CycleData, prepare_data
from medgr2_ray.eval.timeline import STAGES_FILE, write_timeline
from medgr2_ray.loop.evaluation import finish_evaluation, start_evaluation
from medgr2_ray.loop.flywheel import Flywheel
from medgr2_ray.loop.grpo_stage import GRPOResult, grpo_learner, grpo_on, set_aside_grpo_redone
from medgr2_ray.loop.learner_lane import draw_salt
from medgr2_ray.loop.round_state import RoundRecord
from medgr2_ray.loop.rounds import plan_rounds, run_rounds
from medgr2_ray.loop.transfer import run_configured_transfers
from medgr2_ray.messages import GRPOAccounting, Recipe, Span, StageWork
from medgr2_ray.metrics import RunLog, set_aside_records
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import Sample

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CycleResult:
    """Where the run went and what it measured."""

    run_dir: Path
    evals: dict[str, EvalResult]
    report: Path
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    kept: int = 0
    data_ledger: Any = None  # the data lane's DataLedger: every generation request and its receipt
    grpo: GRPOAccounting | None = None  # where every GRPO request went


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


def model_dirs(cfg: Config) -> ModelDirs:
    """Each model's starting directory (tiny models are built offline into the cache once)."""
    cache, seed = cfg.data.cache_dir, cfg.run.seed
    return ModelDirs(str(ensure_model_dir(cfg.policy, cache, seed, "policy")),
                     str(ensure_model_dir(cfg.generator, cache, seed, "generator")),
                     str(ensure_model_dir(cfg.reward_model, cache, seed, "reward")))


def build_system(cfg: Config, data: CycleData, run_dir: Path, resume_rounds: int, prefix: str = "",
                 resume_stream: bool = False) -> ActorSystem:
    """Put every image's pixels into the object store once and start the whole actor system
    (`resume_stream`: a continuous run's `--resume`: the store replays its log, the learners continue)."""
    images = {i.image_id: ray.put(data.pool.read_rgb(i)) for i in data.pool.images}
    # Learners and engines see the training images only; the store's guard also reads the held-out ones.
    shared = ActorSystem.shared(cfg, prefix, run_dir / "ray_train", images, {i.image_id: i for i in data.train})
    store = StoreSpec(str(run_dir / "data"), tuple(data.seeds), cfg.selection, cfg.run.seed, cfg.cycle.mode == "rounds",
                      {i.image_id: i for i in data.pool.images}, images, tuple(i.image_id for i in data.test), tuple(data.test_samples),
                      cfg.cycle.generator_staleness, cfg.cycle.reward_staleness, resume_rounds, resume_stream)
    return ActorSystem.build_flywheel(shared, model_dirs(cfg), store, resume=resume_stream)


def check_continuous_resume(run_dir: Path, prefix: str = "") -> None:
    """Refuse, in one line, a `--resume` of a continuous run that left nothing to continue from."""
    feeds = [feed_state_path(run_dir / "ray_train", f"{prefix}{n}") for n in LEARNER_NAMES]
    if not (run_dir / "data" / "stream" / "offers.jsonl").is_file() and not any(f.is_file() for f in feeds):
        raise ValueError(f"--resume: '{run_dir}' holds no continuous-mode run to continue (no data/stream/offers.jsonl "
                         "and no ray_train/*-feed.json); run without --resume to start it")


LANE_STAGES = {"generator_sft": "GeneratorLearner", "reward_model": "RewardLearner", "solver_sft": "PolicyLearner"}


def set_aside_redone(run_dir: Path, prefix: str = "") -> int:
    """A continuous `--resume` redoes each learner's steps past its newest checkpoint, and logs them again:
    the killed run's records of those steps (feed item index >= the checkpoint's) are moved out of
    `metrics.jsonl` into `metrics.redone.jsonl` (not deleted: they show what the killed run did), so the
    log holds one record per step. Returns how many were moved."""
    covered: dict[str, int] = {}
    for stage, name in LANE_STAGES.items():
        state = feed_state_path(run_dir / "ray_train", f"{prefix}{name}")
        if state.is_file():
            covered[stage] = int(read_json_state(state)["covered"])
    return set_aside_records(run_dir, lambda r: r.get("stage") in covered and r.get("item") is not None
                             and r["item"] >= covered[r["stage"]])


class Stopwatch:
    """Wall time per stage, for the summary and the run log."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t
        self._t = now


def _data_phase(cfg: Config, wheel: Flywheel, data: CycleData, run_dir: Path, done: list[RoundRecord],
                resume: bool) -> None:
    """The flywheel's data phase in the configured mode; P's SFT is done when it returns."""
    if cfg.cycle.mode == "continuous":
        wheel.run_continuous(resume=resume)
        return
    run_rounds(wheel, cfg, data, run_dir, done)
    wheel.train_solver()


@dataclass(frozen=True)
class DataRun:
    """What the data side alone produced (`run_data_only`)."""

    run_dir: Path
    kept: list[Sample]
    reward_dir: Path
    seconds: float
    ledger: Any  # the data lane's DataLedger
    timeline: Path
    data_seconds: float  # from the end of the bootstrap to the end of the data phase
    data_started: float  # wall-clock (time.time()) at the end of the bootstrap



def run_data_only(cfg: Config, progress: Progress, resume: bool = False, budget_s: float | None = None,
                  prefix: str = "") -> DataRun:
    """G and R's co-evolution without the solver (tests and benchmarks): the rounds mode's rounds (with
    `budget_s`: no round starts after that many seconds past the bootstrap), or the continuous mode for
    `budget_s` seconds of generation after the bootstrap. Ray must be initialised."""
    start = time.time()
    cfg = with_absolute_paths(cfg)
    run_dir = _run_dir(cfg)
    data = prepare_data(cfg)
    done = plan_rounds(cfg, data, run_dir, resume) if cfg.cycle.mode == "rounds" else []
    with RunLog(run_dir, tensorboard=False) as log:
        system = build_system(cfg, data, run_dir, done[-1].round if done else 0, prefix)
        try:
            wheel = Flywheel(cfg, system, data, log, progress)
            if cfg.cycle.mode == "rounds":
                run_rounds(wheel, cfg, data, run_dir, done, budget_s)
            else:
                wheel.run_continuous(budget_s=budget_s)
            kept: list[Sample] = ray.get(system.store.kept_samples.remote())
            assert system.r_learner is not None
            reward_dir = Path(system.r_learner.save_pretrained(run_dir / "models" / "reward_model"))
            timeline = _write_timeline(system, wheel, run_dir, start)
        finally:
            system.shutdown()
    data_started = wheel.marks.get("bootstrapped", start)
    data_seconds = wheel.marks.get("data_end", time.time()) - data_started
    return DataRun(run_dir, kept, reward_dir, time.time() - start, wheel.lane.ledger, timeline, data_seconds,
                   data_started)


def _grpo(cfg: Config, system: ActorSystem, wheel: Flywheel, train_set: list[Sample], run_dir: Path,
          progress: Progress, resume: bool) -> GRPOResult:
    """GRPO on the same learner and scorer pool, on kept questions P's SFT did not draw (all of the
    solver's training set when fewer than one step's worth are left)."""
    fresh = ray.get(system.store.kept_samples.remote(0, draw_salt(wheel.p.salt, Recipe.SOLVER_SFT)))
    prompts = fresh if len(fresh) >= cfg.grpo.prompts_per_step else train_set
    wheel.phase = "grpo"
    system.learner.run(StageWork(grpo_learner(cfg)))
    return grpo_on(cfg, system, prompts, run_dir, progress, resume, wheel.spans)


def run_cycle(cfg: Config, progress: Progress, resume: bool = False, prefix: str = "") -> CycleResult:
    """Run every stage (see the module docstring); Ray must be initialised. `prefix` names this run's
    actors (two runs can then share a namespace; a resume must use the same prefix). `resume`: continue a
    killed run in the same directory: the rounds mode after its last complete round; the continuous mode
    from each learner's newest checkpoint and the store's log (`Flywheel.run_continuous`: no kept sample
    or SFT step is lost or counted twice, but the result is not bit-identical to an unbroken run)."""
    start, clock = time.time(), Stopwatch()
    cfg = with_absolute_paths(cfg)
    continuous = cfg.cycle.mode == "continuous"
    if resume and continuous:
        check_continuous_resume(Path(cfg.run.root) / cfg.run.name, prefix)
        set_aside_redone(Path(cfg.run.root) / cfg.run.name, prefix)
    if resume:  # GRPO goes on from its newest checkpoint and logs the steps after it again
        set_aside_grpo_redone(Path(cfg.run.root) / cfg.run.name)
    run_dir = _run_dir(cfg)
    data = prepare_data(cfg)
    done = plan_rounds(cfg, data, run_dir, resume) if not continuous else []
    evals: dict[str, EvalResult] = {}
    with RunLog(run_dir) as log:
        system = build_system(cfg, data, run_dir, done[-1].round if done else 0, prefix, resume and continuous)
        clock.lap("start actors")
        try:
            untrained = start_evaluation(cfg, Path(system.learner.spec.model_dir), data.test_samples)
            wheel = Flywheel(cfg, system, data, log, progress)
            evaluated = _Evaluations(run_dir, wheel.spans)
            _data_phase(cfg, wheel, data, run_dir, done, resume)
            clock.lap("data + solver SFT")
            kept: list[Sample] = ray.get(system.store.kept_samples.remote())
            train_set = kept + (data.seeds if cfg.solver.include_seeds else [])
            write_samples(run_dir / "data" / "solver_train.jsonl", train_set)
            sft_dir = Path(system.learner.save_pretrained(run_dir / "models" / "solver_sft"))
            after_sft = start_evaluation(cfg, sft_dir, data.test_samples)
            sft_done = time.time()
            evals["untrained"] = evaluated.finish(untrained, "0_untrained", start)
            final, grpo = sft_dir, None
            if cfg.solver.grpo and cfg.grpo.steps > 0:
                grpo = _grpo(cfg, system, wheel, train_set, run_dir, progress, resume)
                final = grpo.model_dir
            evals["after_sft"] = evaluated.finish(after_sft, "1_after_sft", sft_done)
            if final != sft_dir:
                grpo_done = time.time()
                evals["after_grpo"] = evaluated.finish(start_evaluation(cfg, final, data.test_samples), "2_after_grpo",
                                                       grpo_done)
            clock.lap("GRPO + evaluation")
            _save_models(system, run_dir)
            _write_timeline(system, wheel, run_dir, start)
        finally:
            system.shutdown()
        evals.update(_external_tests(cfg, final, run_dir))
        run_configured_transfers(cfg, data, run_dir, progress)  # Med-R1 protocols, if eval.transfer_protocols
        for name, result in evals.items():
            log.log(0, {"accuracy": result.accuracy, "blind_bound": result.blind_bound}, f"eval_{name}")
    report = build_report(run_dir)
    clock.lap("report")
    (run_dir / STAGES_FILE).write_text(json.dumps({k: round(v, 2) for k, v in clock.seconds.items()}))
    return CycleResult(run_dir, evals, report, time.time() - start, clock.seconds, len(kept), wheel.lane.ledger,
                       grpo.accounting if grpo is not None else None)


@dataclass
class _Evaluations:
    """Finishes evaluation tasks and puts each on the timeline, from when the task started to when it
    ended (as it recorded them in eval/<point>.json; the driver may collect it much later)."""

    run_dir: Path
    spans: list[Span]

    def finish(self, ref: Any, point: str, started: float) -> EvalResult:
        result = finish_evaluation(ref, self.run_dir, point)
        saved = json.loads((self.run_dir / "eval" / f"{point}.json").read_text())
        self.spans.append(Span(f"evaluate {point.split('_', 1)[1]}", "evaluate", float(saved.get("started_at", started)),
                               float(saved.get("ended_at", time.time()))))
        return result


def _save_models(system: ActorSystem, run_dir: Path) -> None:
    """G and R as directories beside the solver (for inspection, `medgr2 eval`, and a later run)."""
    assert system.g_learner is not None and system.r_learner is not None
    system.g_learner.save_pretrained(run_dir / "models" / "generator")
    system.r_learner.save_pretrained(run_dir / "models" / "reward_model")


def _write_timeline(system: ActorSystem, wheel: Flywheel, run_dir: Path, t0: float) -> Path:
    """Every actor's busy spans (pools via the monitor, learners from their reports) as `timeline.jsonl`."""
    spans: list[Span] = list(ray.get(system.monitor.drain_spans.remote()))
    for lane in (wheel.g, wheel.r, wheel.p):
        spans += lane.spans
    spans += wheel.spans
    return write_timeline(run_dir, spans, t0)


def _external_tests(cfg: Config, model_dir: Path, run_dir: Path) -> dict[str, EvalResult]:
    """The OmniMedVQA-format test sets the config names, scored with the same protocol; a record that
    cannot be read is counted in `eval/<name>.errors.json`, never silently skipped."""
    from medgr2_ray.data.formats import read_omnimedvqa
    from medgr2_ray.data.store import RecordError
    from medgr2_ray.loop.evaluation import evaluate_solver

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
