"""The flywheel on a real Ray cluster with real tiny models and the real seed pool.

- The rounds mode is the paper's synchronous algorithm: it equals a hand-written synchronous round loop
  (in one process: the same learners, engine, parsing, scoring and selection, no Ray) bit for bit.
- The continuous mode overlaps generation with learning (the timeline shows the generator generating
  while G and R train), keeps every candidate's G and R version within its staleness bound, accounts
  for every request exactly once, and `medgr2 status` answers during the data phase.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medgr2_ray.actors.system import reward_objective
from medgr2_ray.algo.batches import sample_batch
from medgr2_ray.algo.contamination import build_guard
from medgr2_ray.algo.requests import generator_requests, parse_candidates, resolve_images, reward_request
from medgr2_ray.algo.selection import select_samples
from medgr2_ray.config import Config, load_config
from medgr2_ray.data.images import ImageCache
from medgr2_ray.data.store import read_samples
from medgr2_ray.eval.rundata import prepare_data
from medgr2_ray.learner.recipes import RecipeContext, run_recipe
from medgr2_ray.eval.timeline import GENERATOR_REFRESH, REWARD_REFRESH, overlap, read_timeline
from medgr2_ray.loop.cycle import DataRun, model_dirs, run_data_only, with_absolute_paths
from medgr2_ray.loop.learner_lane import draw_salt
from medgr2_ray.loop.rounds import round_images
from medgr2_ray.messages import Recipe
from medgr2_ray.types import PromptStrategy, Sample, SamplingParams, TaskType

pytestmark = pytest.mark.slow

SMALL = [
    "cycle.tasks=[Modality Recognition]", "cycle.strategies=[direct,step_by_step]", "cycle.images_per_round=4",
    "cycle.samples_per_prompt=2", "cycle.temperature=0.6", "cycle.max_new_tokens=60", "cycle.batch_size=8",
    "cycle.generator_bootstrap_steps=60", "cycle.rm_answer_steps=6", "cycle.rm_bootstrap_steps=6",
    "cycle.generator_rft_steps=3", "cycle.rm_refresh_steps=3", "learner.lr=5e-3", "loop.requests_per_call=2",
    "learner.num_cpus_per_rank=0.5", "generator_pool.num_cpus=0.5", "scorer_pool.num_cpus=0.5",
    "rollout_pool.num_cpus=0.5", "learner.checkpoint_every=0", "loop.poll_s=0.1",
]


def _config(root: Path, name: str, cache: Path, *extra: str) -> Config:
    return with_absolute_paths(load_config(None, [f"run.root={root}", f"run.name={name}",
                                                  f"data.cache_dir={cache}", *SMALL, *extra]))


@dataclass(frozen=True)
class Hand:
    kept: list[Sample]
    generator: dict[str, np.ndarray]
    reward_model: dict[str, np.ndarray]


def _train(learner: Any, recipe: Recipe, role: str, items: list[Sample], steps: int, cfg: Config,
           ctx: RecipeContext, counters: Counter) -> None:
    """What a learner lane and the store do for `steps` steps, in one process."""
    for _ in range(steps):
        step = counters[recipe]
        batch = sample_batch(items, cfg.cycle.batch_size, cfg.run.seed, draw_salt(role, recipe), step)
        run_recipe(learner, recipe, batch, step, ctx)
        counters[recipe] += 1


def _round(cfg: Config, k: int, data: Any, engine: Any, rm: Any, images: ImageCache, guard: Any) -> list[Sample]:
    """Generate for round k's images in calls of `loop.requests_per_call`, parse and score each call."""
    requests, meta = generator_requests(round_images(cfg, data.train, k), [TaskType(t) for t in cfg.cycle.tasks],
                                        [PromptStrategy(s) for s in cfg.cycle.strategies], None, k)
    sampling = SamplingParams(n=cfg.cycle.samples_per_prompt, temperature=cfg.cycle.temperature,
                              max_new_tokens=cfg.cycle.max_new_tokens)
    candidates: list[Sample] = []
    per = cfg.loop.requests_per_call
    for chunk in (requests[i:i + per] for i in range(0, len(requests), per)):
        seed = zlib.crc32(f"{cfg.run.seed}:{chunk[0].request_id}".encode())
        rollouts = engine.generate([resolve_images(r, images) for r in chunk], replace(sampling, seed=seed))
        parsed = parse_candidates(rollouts, {r.request_id: meta[r.request_id] for r in chunk}, k)
        scores = rm.score([resolve_images(reward_request(s, None), images) for s in parsed.samples])
        candidates += [s.with_provenance(reward=float(x) if np.isfinite(x) else None, rm_version=int(rm.version))
                       for s, x in zip(parsed.samples, scores) if guard is None or guard.check(s, images) is None]
    return sorted(candidates, key=lambda s: s.sample_id)


def hand_written_rounds(cfg: Config) -> Hand:
    """The paper's rounds, synchronously, in this process: no actors, no feeds, no store."""
    from medgr2_ray.engines.hf import HFEngine
    from medgr2_ray.learner.policy import PolicyLearner
    from medgr2_ray.learner.reward import RewardLearner

    data, dirs = prepare_data(cfg), model_dirs(cfg)
    images = ImageCache.of_images(data.pool.images, data.pool.root)
    ctx = RecipeContext(images, {i.image_id: i for i in data.train}, cfg.run.seed, graded=cfg.graded)
    g = PolicyLearner(dirs.generator, cfg.generator, cfg.learner, cfg.grpo, cfg.run.seed)
    rm = RewardLearner(dirs.reward_model, cfg.reward_model, cfg.learner, cfg.run.seed, objective=reward_objective(cfg))
    g_steps, r_steps, seeds, kept = Counter(), Counter(), list(data.seeds), []
    _train(g, Recipe.GENERATOR_SFT, "generator", seeds, cfg.cycle.generator_bootstrap_steps, cfg, ctx, g_steps)
    _train(rm, Recipe.REWARD_ANSWER, "reward_model", seeds, cfg.cycle.rm_answer_steps, cfg, ctx, r_steps)
    _train(rm, Recipe.REWARD_GRADE, "reward_model", seeds, cfg.cycle.rm_bootstrap_steps, cfg, ctx, r_steps)
    engine = HFEngine(dirs.generator, cfg.generator, cfg.engine)
    guard = build_guard(cfg.selection, [i.image_id for i in data.test], images, data.test_samples)
    for k in range(1, cfg.cycle.rounds + 1):
        engine.load_weights(g.export_weights(), int(g.version))
        candidates = _round(cfg, k, data, engine, rm, images, guard)
        chosen = list(select_samples(candidates, cfg.selection, cfg.run.seed + k).kept)
        kept += chosen
        if chosen:
            _train(g, Recipe.GENERATOR_SFT, "generator", chosen, cfg.cycle.generator_rft_steps, cfg, ctx, g_steps)
            _train(rm, Recipe.REWARD_GRADE, "reward_model", chosen, cfg.cycle.rm_refresh_steps, cfg, ctx, r_steps)
    numpy = lambda learner: {k: v.detach().numpy().copy() for k, v in learner.export_state().items()}  # noqa: E731
    return Hand(kept, numpy(g), numpy(rm))


def test_rounds_mode_equals_the_hand_written_synchronous_loop(ray_cluster: None, tiny_cache: Path,
                                                               tmp_path: Path) -> None:
    cfg = _config(tmp_path, "rounds", tiny_cache, "cycle.mode=rounds", "cycle.rounds=2",
                  "cycle.generator_staleness=0", "cycle.reward_staleness=0", "generator_pool.max_workers=1")
    run = run_data_only(cfg, lambda *_: None)
    hand = hand_written_rounds(cfg)
    assert hand.kept, "the rounds must keep samples, or the comparison proves little"
    assert [(s.sample_id, s.provenance.reward) for s in run.kept] == \
        [(s.sample_id, s.provenance.reward) for s in hand.kept]
    for name, saved in (("generator", hand.generator), ("reward_model", hand.reward_model)):
        from medgr2_ray.checkpoint import load_tensors
        from medgr2_ray.loop.round_state import round_checkpoint

        got = load_tensors(round_checkpoint(run.run_dir, 2) / name / "model.safetensors")
        for key, tensor in got.items():
            np.testing.assert_array_equal(tensor.numpy(), saved[key], err_msg=f"{name}: {key}")


@pytest.fixture(scope="module")
def continuous(ray_cluster: None, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A continuous data phase of 40 s after the bootstrap; `medgr2 status` read while it runs."""
    root = tmp_path_factory.mktemp("continuous")
    cfg = _config(root, "continuous", tiny_cache, "cycle.publish_every=2", "cycle.generator_steps_per_kept=1.0",
                  "cycle.generator_staleness=0", "cycle.reward_staleness=1", "cycle.temperature=0.3",
                  "cycle.generator_bootstrap_steps=150", "cycle.max_new_tokens=120",
                  "cycle.rm_steps_per_kept=1.0", "generator_pool.max_workers=2", "selection.tau=null",
                  "ray.namespace=medgr2-tests")
    seen: list[Any] = []

    def watch() -> None:
        from medgr2_ray.cli.status_cmd import read_status

        for _ in range(300):
            status = read_status("medgr2-tests", "fly-")
            if status is not None and getattr(status, "data", None) is not None and status.data.candidates:
                seen.append(status)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run = run_data_only(cfg, lambda *_: None, budget_s=40.0, prefix="fly-")
    watcher.join(timeout=5)
    return {"run": run, "cfg": cfg, "status": seen}


def test_generation_overlaps_learning_in_the_timeline(continuous: dict[str, Any]) -> None:
    spans = read_timeline(continuous["run"].run_dir)
    kinds = {s.kind for s in spans}
    assert {"generate", "score"} <= kinds and any(k.startswith("train:") for k in kinds)
    # after the bootstrap (which the generator must wait for), G and R train while the generator generates
    share = overlap(spans, ("generate",), (GENERATOR_REFRESH, REWARD_REFRESH))
    assert share is not None and share > 0.5, f"the generator generated during {share} of G's and R's refresh"
    assert overlap(spans, ("generate",), ("train:generator_bootstrap",)) == 0.0  # nothing generated unbootstrapped


def test_every_request_is_answered_once_and_staleness_stays_in_bound(continuous: dict[str, Any]) -> None:
    run: DataRun = continuous["run"]
    cfg: Config = continuous["cfg"]
    ledger = run.ledger
    assert ledger.answered and not ledger.refused
    assert Counter(ledger.answered) == Counter(set(ledger.issued))  # each issued request answered exactly once
    samples = read_samples(run.run_dir / "data" / "stream" / "samples.jsonl")
    assert len({s.sample_id for s in samples}) == len(samples)
    assert {s.sample_id for s in samples if s.provenance.selected} == {s.sample_id for s in run.kept}
    decided = {s.sample_id: s for s in samples}
    lags = Counter()
    offers = [json.loads(line) for line in (run.run_dir / "data" / "stream" / "offers.jsonl").read_text().splitlines()]
    assert len({o["versions"]["generator"] for o in offers}) > 1, "G must have published during the data phase"
    assert len({o["versions"]["reward_model"] for o in offers}) > 1, "R must have published during the data phase"
    for offer in offers:
        for raw in offer["samples"]:
            s = decided[raw["sample_id"]]
            g_lag = offer["versions"]["generator"] - s.provenance.model_version
            r_lag = offer["versions"]["reward_model"] - s.provenance.rm_version
            lags[g_lag] += 1
            if g_lag > cfg.cycle.generator_staleness:
                assert s.provenance.reason == "stale_generator", s
            elif r_lag > cfg.cycle.reward_staleness:
                assert s.provenance.reason == "stale_reward", s
            else:  # within both bounds: selection decided it on its merits
                assert s.provenance.reason not in ("stale_generator", "stale_reward"), s
    assert sum(lags.values()) == len(samples)


def test_status_answers_during_the_data_phase(continuous: dict[str, Any]) -> None:
    from medgr2_ray.cli.status_cmd import format_status

    assert continuous["status"], "medgr2 status saw no data-phase status while the flywheel ran"
    status = continuous["status"][0]
    text = format_status(status)
    assert status.phase == "data" and "generator-rollout" in text and "learner" in text
    assert {lane.name for lane in status.learners} == {"fly-GeneratorLearner", "fly-RewardLearner", "fly-PolicyLearner"}
