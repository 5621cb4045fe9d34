"""One data-side job of the flywheel (generate -> parse + score -> select), run two ways, for
orchestration_overhead.py:

* `run_lane`: the flywheel's data lane (`loop.data_lane.DataLane`) on real actors, as the main job runs
  it: a generator pool of one `RolloutActor` (G), a scorer pool of one `ScorerActor` (R), the
  `KeptStore`; requests name their images by id (the pixels were put in the object store once). The
  calls run one at a time (a call's chain is done before the next is launched: nothing overlaps), so
  every second above the work is orchestration, as in the synchronous GRPO loop.
* `run_plain`: the same calls in this process without Ray, through the same classes: `HFEngine.generate`
  -> `ScorerActor.score_candidates` -> `KeptStore.offer` (the actor classes are plain Python classes).

Both use the main job's config (`configs/cpu-tiny.yaml`: models, seed pool, selection), the same prompts
(the continuous mode's prompt stream), the same per-call sampling seeds and G weights, so they do the
same work. G is first fine-tuned on the seeds in this process (`bootstrap_generator`, cached) so that
it writes samples that parse and R has something to score; R is the untrained tiny reward model (its
scores are meaningless here, its compute is not).
"""

from __future__ import annotations

import itertools
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import common
import proc_cpu
from medgr2_ray.config import Config


@dataclass(frozen=True)
class DataShape:
    """What one data-side call does, and how many are timed."""

    calls: int
    requests_per_call: int = 4
    samples_per_prompt: int = 2
    max_new_tokens: int = 120
    warmup_calls: int = 1
    g_steps: int = 400  # G's SFT steps on the seeds before (the main job's bootstrap: ~45% of outputs parse)
    settle_s: float = 0.0  # seconds to wait after the actors are up (grpo_job.JobShape.settle_s says why)


def data_config(shape: DataShape, root: Path, cache: Path, loop: dict[str, Any] | None = None) -> Config:
    """The main job's config, with one generator and one scorer and the call's size."""
    from medgr2_ray.config import load_config
    from medgr2_ray.loop.cycle import with_absolute_paths

    sets = [f"run.root={root}", "run.name=data-bench", f"data.cache_dir={cache}", "run.torch_threads=1",
            f"cycle.samples_per_prompt={shape.samples_per_prompt}", f"cycle.max_new_tokens={shape.max_new_tokens}",
            f"loop.requests_per_call={shape.requests_per_call}", "generator_pool.min_workers=1",
            "generator_pool.max_workers=1", "scorer_pool.min_workers=1", "scorer_pool.max_workers=1",
            "selection.guard=false"]
    sets += [f"loop.{k}={str(v).lower()}" for k, v in (loop or {}).items()]
    return with_absolute_paths(load_config(common.REPO / "configs" / "cpu-tiny.yaml", sets))


@dataclass(frozen=True)
class DataSetting:
    """Everything both ways share: config, data, model directories, the prompts of every call."""

    cfg: Config
    data: Any  # eval.rundata.CycleData
    generator_dir: str
    reward_dir: str
    calls: list[list[tuple[Any, Any]]]  # (GenerationRequest, CandidateMeta) per call
    warmup: int  # the first calls are not timed
    settle_s: float = 0.0


def bootstrap_generator(cfg: Config, data: Any, steps: int, cache: Path) -> str:
    """G fine-tuned on the seeds for `steps` steps in this process (cached by step count)."""
    from medgr2_ray.data.images import ImageCache
    from medgr2_ray.learner.policy import PolicyLearner
    from medgr2_ray.learner.recipes import RecipeContext, run_recipe
    from medgr2_ray.algo.batches import sample_batch
    from medgr2_ray.loop.cycle import model_dirs
    from medgr2_ray.messages import Recipe

    out = cache / f"bench-generator-sft{steps}"
    if (out / "config.json").is_file():
        return str(out)
    learner = PolicyLearner(model_dirs(cfg).generator, cfg.generator, cfg.learner, cfg.grpo, cfg.run.seed)
    images = ImageCache.of_images(data.pool.images, data.pool.root)
    ctx = RecipeContext(images, {i.image_id: i for i in data.train}, cfg.run.seed, graded=cfg.graded)
    for step in range(steps):
        batch = sample_batch(list(data.seeds), cfg.cycle.batch_size, cfg.run.seed, "bench-generator", step)
        run_recipe(learner, Recipe.GENERATOR_SFT, batch, step, ctx)
    return learner.save_pretrained(out)


def setting(shape: DataShape, root: Path, cache: Path) -> DataSetting:
    """Data, models and the prompts of every call (warm-up calls first)."""
    from medgr2_ray.eval.rundata import prepare_data
    from medgr2_ray.loop.cycle import model_dirs
    from medgr2_ray.loop.flywheel import prompt_stream
    from medgr2_ray.types import PromptStrategy, TaskType

    cfg = data_config(shape, root, cache)
    data = prepare_data(cfg)
    stream = prompt_stream(data.train, [TaskType(t) for t in cfg.cycle.tasks],
                           [PromptStrategy(s) for s in cfg.cycle.strategies], cfg.run.seed)
    total = shape.warmup_calls + shape.calls
    prompts = list(itertools.islice(stream, total * shape.requests_per_call))
    calls = [prompts[i * shape.requests_per_call:(i + 1) * shape.requests_per_call] for i in range(total)]
    return DataSetting(cfg, data, bootstrap_generator(cfg, data, shape.g_steps, cache), model_dirs(cfg).reward_model,
                       calls, shape.warmup_calls, shape.settle_s)


def store_spec(cfg: Config, data: Any, out_dir: Path, images: dict[str, Any]) -> Any:
    from medgr2_ray.actors.store import StoreSpec

    return StoreSpec(str(out_dir), tuple(data.seeds), cfg.selection, cfg.run.seed, False,
                     {i.image_id: i for i in data.pool.images}, images, (), (),
                     cfg.cycle.generator_staleness, cfg.cycle.reward_staleness)


def scorer_spec(cfg: Config, reward_dir: str, images: dict[str, Any], monitor: Any = None) -> Any:
    from medgr2_ray.actors.scorer import ScorerSpec
    from medgr2_ray.actors.system import reward_objective

    return ScorerSpec(reward_dir, cfg.reward_model, cfg.reward, cfg.learner.micro_batch_size, cfg.run.seed,
                      reward_objective(cfg), cfg.run.torch_threads, images, monitor)


@dataclass
class DataRun:
    """Per-call seconds of the timed calls (and, in one process, each stage's), with what they made."""

    call_s: list[float] = field(default_factory=list)
    generate_s: list[float] = field(default_factory=list)
    score_s: list[float] = field(default_factory=list)
    offer_s: list[float] = field(default_factory=list)
    candidates: int = 0
    kept: int = 0
    trace: Any = None  # the lane's CallTimes and the actors' spans (Ray only)

    @property
    def mean_call_s(self) -> float:
        return float(np.mean(self.call_s))


def _seeded(cfg: Config, call: list[tuple[Any, Any]]) -> Any:
    """The sampling the data lane uses for this call (its seed depends on the call's first request only)."""
    from medgr2_ray.types import SamplingParams

    seed = zlib.crc32(f"{cfg.run.seed}:{call[0][0].request_id}".encode())
    return SamplingParams(n=cfg.cycle.samples_per_prompt, temperature=cfg.cycle.temperature,
                          max_new_tokens=cfg.cycle.max_new_tokens, seed=seed)


def run_plain(s: DataSetting, out_dir: Path) -> DataRun:
    """Every call in this process: generate -> parse + score -> the store's decision."""
    from medgr2_ray.actors.scorer import ScorerActor
    from medgr2_ray.actors.store import KeptStore
    from medgr2_ray.algo.requests import resolve_images
    from medgr2_ray.data.images import ImageCache
    from medgr2_ray.engines.hf import HFEngine
    from medgr2_ray.messages import Versions

    cfg, images = s.cfg, ImageCache.of_images(s.data.pool.images, s.data.pool.root)
    engine = HFEngine(s.generator_dir, cfg.generator, cfg.engine, seed=cfg.run.seed + 7919)
    scorer = ScorerActor(scorer_spec(cfg, s.reward_dir, {}))
    store = KeptStore(store_spec(cfg, s.data, out_dir, {}))
    scorer.images = store.images = images  # in one process the pixels come from the files, not the store
    run = DataRun()
    for k, call in enumerate(s.calls):
        meta = {r.request_id: m for r, m in call}
        start = time.perf_counter()
        gen_s, rollouts = common.timed(lambda: engine.generate([resolve_images(r, images) for r, _ in call],
                                                               _seeded(cfg, call)))
        score_s, scored = common.timed(lambda: scorer.score_candidates(rollouts, meta, 0))
        offer_s, receipt = common.timed(lambda: store.offer(scored, Versions()))
        if k >= s.warmup:
            run.call_s.append(time.perf_counter() - start)
            run.generate_s.append(gen_s)
            run.score_s.append(score_s)
            run.offer_s.append(offer_s)
            run.candidates += receipt.candidates
            run.kept += receipt.kept
    return run


@dataclass
class LaneTrace:
    """What the timed calls of a lane run left behind: the lane's calls and the actors' spans."""

    calls: list[Any]
    spans: list[Any]


def run_lane(s: DataSetting, out_dir: Path, loop: dict[str, Any]) -> DataRun:
    """Every call through the data lane on real actors, one call at a time; always shuts down."""
    import ray

    from medgr2_ray.actors.system import ActorSystem, reward_objective, rollout_pool, scorer_pool
    from medgr2_ray.actors.store import KeptStore
    from medgr2_ray.loop.data_lane import DataLane, wait_any

    cfg = s.cfg.model_copy(update={"loop": s.cfg.loop.model_copy(update=loop)})
    used = {m.image.image_id for call in s.calls for _, m in call}
    images = {i.image_id: ray.put(s.data.pool.read_rgb(i)) for i in s.data.pool.images if i.image_id in used}
    shared = ActorSystem.shared(cfg, "bench-", None, images, {i.image_id: i for i in s.data.train})
    generator = rollout_pool(shared, "generator-rollout", s.generator_dir, cfg.generator, 7919, cfg.generator_pool)
    scorer = scorer_pool(shared, s.reward_dir, reward_objective(cfg))
    store = ray.remote(KeptStore).options(num_cpus=0).remote(store_spec(cfg, s.data, out_dir, images))
    try:
        generator.scale_to(1)
        scorer.scale_to(1)
        while generator.num_ready < 1 or scorer.num_ready < 1:
            generator.poll_ready(1.0)
            scorer.poll_ready(1.0)
        ray.get(store.ready.remote())
        if s.settle_s > 0:
            proc_cpu.wait_quiet(timeout_s=s.settle_s)
        lane, run = DataLane(cfg, generator, scorer, store), DataRun()
        for k, call in enumerate(s.calls):
            if k == s.warmup:
                ray.get(shared.monitor.drain_spans.remote())
                calls_before = len(lane.calls)
            start = time.perf_counter()
            lane.launch(iter(call), 0)
            receipts = []
            while not lane.idle():
                for ref in wait_any(lane.refs(), cfg.loop.poll_s):
                    receipt = lane.on_done(ref)
                    receipts += [receipt] if receipt is not None else []
                lane.pump()
            if k >= s.warmup:
                run.call_s.append(time.perf_counter() - start)
                run.candidates += sum(r.candidates for r in receipts)
                run.kept += sum(r.kept for r in receipts)
        ray.get([m.handle.ready.remote() for m in (*generator.members, *scorer.members)])  # send batched spans
        time.sleep(1.0)  # fire-and-forget calls to the monitor
        run.trace = LaneTrace(list(lane.calls)[calls_before:], ray.get(shared.monitor.drain_spans.remote()))
        return run
    finally:
        generator.shutdown()
        scorer.shutdown()
        for handle in (store, shared.monitor):
            ray.kill(handle)
