"""MedGR² co-evolution on Ray: the generator G and the reward model R improve each other, round by round.

Round 0 bootstraps both from template seeds (G learns to write samples by SFT; R learns the graded
10 / 6 / 0 / -6 scale). Each later round: the generator pool writes candidates for training images with
every prompting strategy; R scores them; selection keeps the best (tau / top-K, balanced); R is refreshed
on graded data built from the kept samples; G is fine-tuned on its kept samples (rejection-sampling
fine-tuning) and publishes new weights that the generator pool loads in place before the next round.
Every candidate is written to `data/round_k/` with its provenance and the selection decision, and every
output that did not become a sample is written with its reason.

Resume (`round_state.py` has the file rules): after round 0 and after every round k, `complete_round`
writes exact checkpoints of G and R (weights, optimizer, schedule, version, RNG; safetensors) to
`checkpoints/rounds/round_k/`, then `data/round_k/DONE.json`; `restore` brings a fresh CoEvolution back
to the end of the last complete round (learners from the checkpoints, kept samples and summaries from
the round files), so the rounds after it run as if there had been no interruption.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from medgr2_ray.actors.learner import LearnerGroup
from medgr2_ray.actors.pool import WorkerPool
from medgr2_ray.actors.reward_learner import RewardLearnerActor
from medgr2_ray.actors.rollout import RolloutActor
from medgr2_ray.algo.perturb import build_graded_samples
from medgr2_ray.algo.selection import select_samples
from medgr2_ray.checkpoint import commit_directory, load_json, staging_directory
from medgr2_ray.config import Config
from medgr2_ray.data.store import write_samples
from medgr2_ray.eval.protocols import answer_agreement
from medgr2_ray.loop.stages import (generator_requests, generator_sft_examples, parse_candidates, reward_examples,
                                    reward_request)
from medgr2_ray.loop.round_state import (KEEP_CHECKPOINTS, IncompatibleRunError, RoundRecord, completed_data,
                                         prune_checkpoints, round_checkpoint, round_dir, write_done)
from medgr2_ray.metrics import RunLog
from medgr2_ray.timeline import Timeline
from medgr2_ray.types import (MedImage, PromptStrategy, RewardExample, RewardObjective, Rollout, Sample, SamplingParams,
                              TaskType, WeightVersion)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
RM_LOGGED = ("loss", "mse", "answer_nll", "p_right", "p_wrong")  # R's step metrics in metrics.jsonl


@dataclass(frozen=True)
class PendingTraining:
    """R's training queued in its actor: the refs of its calls, in order, and how many steps they hold."""

    stage: str
    refs: list[Any]
    steps: int
    started: float = 0.0  # timeline seconds when it was queued


@dataclass
class RoundState:
    """What the rounds produced: every kept sample, and where G and R ended up."""

    kept: list[Sample] = field(default_factory=list)
    generator_version: int = 0
    rm_version: int = 0
    summaries: list[dict[str, Any]] = field(default_factory=list)
    last: RoundRecord | None = None  # the last complete round (its DONE.json), None before round 0 ends


class CoEvolution:
    """Holds G's learner and rollout pool and R's learner for the rounds (see the module docstring)."""

    def __init__(self, cfg: Config, generator_dir: Path, reward_dir: Path, images: dict[str, MedImage],
                 lookup: Callable[[str], np.ndarray], run_dir: Path, log: RunLog, progress: Progress,
                 timeline: Timeline | None = None) -> None:
        self.cfg, self.images, self.lookup, self.run_dir, self.log, self.progress = (
            cfg, images, lookup, run_dir, log, progress)
        self.timeline = timeline
        threads, seed = cfg.run.torch_threads, cfg.run.seed
        self.g_learner = LearnerGroup(generator_dir, cfg.generator, cfg.learner, cfg.grpo, seed,
                                      name="GeneratorLearner", torch_threads=threads)
        self.g_pool = WorkerPool("generator-rollout", RolloutActor, cfg.generator_pool,
                                 lambda i: ("generator-rollout", str(generator_dir), cfg.generator, cfg.engine,
                                            seed + 7919 * (i + 1), threads))
        self.g_pool.scale_to(cfg.generator_pool.min_workers)
        self.r_learner = ray.remote(RewardLearnerActor).options(
            name="RewardLearner", num_cpus=cfg.learner.num_cpus_per_rank, num_gpus=cfg.learner.num_gpus_per_rank,
        ).remote(str(reward_dir), cfg.reward_model, cfg.learner, seed, threads, reward_objective(cfg))
        self.state = RoundState()

    # ------------------------------------------------------------ training helpers
    def _span(self, actor: str, kind: str) -> AbstractContextManager[None]:
        return self.timeline.span(actor, kind) if self.timeline is not None else nullcontext()

    def _batches(self, items: Sequence[Any], steps: int, salt: str) -> list[list[Any]]:
        rng = random.Random(f"{self.cfg.run.seed}|{salt}")
        size = self.cfg.cycle.batch_size
        return [rng.sample(list(items), min(size, len(items))) for _ in range(steps)] if items else []

    def train_generator(self, samples: Sequence[Sample], steps: int, stage: str) -> None:
        """SFT G on rendered samples for `steps` steps, logging the loss."""
        examples = generator_sft_examples(samples, self.images, self.lookup)
        with self._span("G learner", "train_generator"):
            for i, batch in enumerate(self._batches(examples, steps, stage)):
                metrics = self.g_learner.sft_step(batch)
                self.log.log(self.state.generator_version + i, {"loss": metrics.get("loss", float("nan"))}, "generator_sft")
                self.progress(stage, i + 1, steps)
        self.state.generator_version += steps

    def start_reward_model(self, samples: Sequence[Sample], steps: int, stage: str, answer_steps: int = 0
                           ) -> PendingTraining:
        """Queue R's training on `samples` in its actor and return at once (G trains meanwhile):
        `answer_steps` steps of the verifier's answer term on the samples as written (R learns to answer),
        then `steps` of regression onto graded data built from them (faithful / perturbed / incoherent /
        irrelevant). `finish_reward_model` waits, logs and reports progress."""
        graded = build_graded_samples(samples, self.cfg.graded, self.cfg.run.seed + self.state.rm_version)
        answers = [RewardExample(reward_request(s, self.lookup), self.cfg.graded.faithful, "faithful") for s in samples]
        plan = [("answer", b) for b in self._batches(answers, answer_steps, f"{stage}|answer")]
        plan += [("grade", b) for b in self._batches(reward_examples(graded, self.lookup), steps, stage)]
        chunk = max(1, len(plan) // 10)  # a few actor calls, not one per step: progress without chatter
        refs = []
        for start in range(0, len(plan), chunk):
            part = plan[start:start + chunk]
            answer = [b for kind, b in part if kind == "answer"]
            grade = [b for kind, b in part if kind == "grade"]
            if answer:
                refs.append(self.r_learner.answer.remote(answer))
            if grade:
                refs.append(self.r_learner.train.remote(grade))
        return PendingTraining(stage, refs, len(plan), self.timeline.now() if self.timeline is not None else 0.0)

    def finish_reward_model(self, pending: PendingTraining) -> None:
        """Wait for R's queued training, logging every step's metrics in order."""
        done = 0
        for ref in pending.refs:
            for m in ray.get(ref):
                self.log.log(self.state.rm_version + done, {k: m[k] for k in RM_LOGGED if k in m}, "reward_model")
                done += 1
            self.progress(pending.stage, done, pending.steps)
        if self.timeline is not None:  # R trained in its actor from when it was queued until now
            self.timeline.record("R learner", "train_reward", pending.started, self.timeline.now())
        self.state.rm_version += pending.steps

    # ------------------------------------------------------------ round 0
    def bootstrap(self, seeds: Sequence[Sample]) -> None:
        """Round 0: G learns to write samples from the template seeds, R learns the graded scale."""
        _fresh_dir(round_dir(self.run_dir, 0))
        write_samples(round_dir(self.run_dir, 0) / "seeds.jsonl", list(seeds))
        cycle = self.cfg.cycle
        pending = self.start_reward_model(seeds, cycle.rm_bootstrap_steps, "round 0: reward model",
                                          cycle.rm_answer_steps if cycle.rm_verifier else 0)
        self.train_generator(seeds, cycle.generator_bootstrap_steps, "round 0: generator SFT")
        self.finish_reward_model(pending)

    # ------------------------------------------------------------ one round
    def _generate(self, requests: list, sampling: SamplingParams, weights: WeightVersion) -> list[Rollout]:
        ray.get([m.ready_ref for m in self.g_pool.members])
        members = self.g_pool.members
        per_call = max(1, self.cfg.loop.requests_per_call)
        chunks = [requests[i:i + per_call] for i in range(0, len(requests), per_call)]
        refs = [members[i % len(members)].handle.generate.remote(c, sampling, weights) for i, c in enumerate(chunks)]
        out: list[Rollout] = []
        for i, ref in enumerate(refs):
            out.extend(ray.get(ref))
            self.progress("generate", i + 1, len(refs))
        return out

    def run_round(self, k: int, train_images: Sequence[MedImage]) -> None:
        """Generate, score, select, record; then refresh R and fine-tune G on the kept samples."""
        cfg = self.cfg.cycle
        _fresh_dir(round_dir(self.run_dir, k))  # a round redone after a crash starts from an empty directory
        rng = random.Random(f"{self.cfg.run.seed}|round|{k}")
        chosen = rng.sample(list(train_images), min(cfg.images_per_round, len(train_images)))
        tasks = [TaskType(t) for t in cfg.tasks]
        strategies = [PromptStrategy(s) for s in cfg.strategies]
        requests, meta = generator_requests(chosen, tasks, strategies, self.lookup, k)
        sampling = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature,
                                  max_new_tokens=cfg.max_new_tokens, seed=self.cfg.run.seed + k)
        weights = self.g_learner.publish()
        with self._span("generator pool", "generate"):
            rollouts = self._generate(requests, sampling, weights)
        parsed = parse_candidates(rollouts, meta, k)
        with self._span("R learner", "score"):
            scores = ray.get(self.r_learner.score.remote([reward_request(s, self.lookup) for s in parsed.samples]))
        scored = [s.with_provenance(reward=float(r), rm_version=self.state.rm_version)
                  for s, r in zip(parsed.samples, scores)]
        with self._span("driver", "select"):
            selection = select_samples(scored, self.cfg.selection, self.cfg.run.seed + k)
        kept_ids = {s.sample_id for s in selection.kept}
        reasons = {r.sample.sample_id: r.reason for r in selection.rejected}
        decided = [s.with_provenance(selected=s.sample_id in kept_ids, reason=reasons.get(s.sample_id)) for s in scored]
        self._record(k, rollouts, parsed, decided, selection)
        self.state.kept.extend(selection.kept)
        pending = None
        if self.cfg.cycle.rm_retrain and selection.kept:  # R refreshes in its actor while G fine-tunes
            pending = self.start_reward_model(selection.kept, cfg.rm_refresh_steps, f"round {k}: reward model")
        if selection.kept:
            self.train_generator(selection.kept, cfg.generator_rft_steps, f"round {k}: generator RFT")
        if pending is not None:
            self.finish_reward_model(pending)

    def _record(self, k: int, rollouts: list[Rollout], parsed: Any, decided: list[Sample], selection: Any) -> None:
        out = round_dir(self.run_dir, k)
        write_samples(out / "samples.jsonl", decided)
        write_samples(out / "kept.jsonl", list(selection.kept))  # exactly what joined `state.kept`, in order
        with (out / "failures.jsonl").open("w") as f:
            for failure in parsed.failures:
                f.write(json.dumps({"reason": failure.reason, "text": failure.text}) + "\n")
        rewards = [s.provenance.reward for s in decided if s.provenance.reward is not None and np.isfinite(s.provenance.reward)]
        kept_rewards = [s.provenance.reward for s in selection.kept if s.provenance.reward is not None]
        summary = {
            "round": k, "outputs": len(rollouts), "samples": len(decided), "unparseable": len(parsed.failures),
            "duplicates": parsed.duplicates, "kept": len(selection.kept), "rejected": dict(selection.counts()),
            "failure_reasons": parsed.failure_counts(),
            "reward_mean": float(np.mean(rewards)) if rewards else None,
            "kept_reward_mean": float(np.mean(kept_rewards)) if kept_rewards else None,
            "kept_answer_correct": answer_agreement(selection.kept, self.images),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        self.state.summaries.append(summary)
        self.log.log(k, {key: float(v) for key, v in summary.items() if isinstance(v, (int, float)) and v is not None}, "round")

    # ------------------------------------------------------------ resume
    def complete_round(self, k: int, fingerprint: dict[str, Any]) -> RoundRecord:
        """Checkpoint G and R after round k, then mark it complete (DONE.json last); prune old checkpoints."""
        previous = self.state.last.digest if self.state.last is not None else None
        extra = {"round": k, "previous": previous or ""}
        where = round_checkpoint(self.run_dir, k)
        r_saved = self.r_learner.save_checkpoint.remote(str(where / "reward_model"), extra)
        self.g_learner.save_checkpoint(where / "generator", extra)
        ray.get(r_saved)
        kept = int(self.state.summaries[-1]["kept"]) if k > 0 else 0
        self.state.last = write_done(self.run_dir, k, self.state.generator_version, self.state.rm_version, kept,
                                     fingerprint, previous)
        prune_checkpoints(self.run_dir, k)
        return self.state.last

    def restore(self, records: Sequence[RoundRecord]) -> None:
        """Continue after the last of `records` (a complete chain from round 0): learners from its
        checkpoints, kept samples and summaries from rounds 1..k's files."""
        last = records[-1]
        where = round_checkpoint(self.run_dir, last.round)
        for name in ("generator", "reward_model"):
            trainer = where / name / "trainer.json"
            meta = load_json(trainer).get("extra", {}) if trainer.is_file() else {}
            if meta.get("round") != last.round or meta.get("previous") != (last.previous or ""):
                raise IncompatibleRunError(
                    f"{where / name}: no checkpoint written by round {last.round} of the rounds that {last.path} "
                    f"completes (only the last {KEEP_CHECKPOINTS} rounds' checkpoints are kept); "
                    "run without --resume to start the rounds over")
        self.g_learner.load_checkpoint(where / "generator")
        ray.get(self.r_learner.load_checkpoint.remote(str(where / "reward_model")))
        kept, summaries = completed_data(self.run_dir, records)
        self.state = RoundState(kept, last.generator_version, last.rm_version, summaries, last)

    def save(self, out_dir: Path) -> Path:
        """Write R as a directory (the GRPO scorer pool loads it), whole or not at all."""
        staged = staging_directory(out_dir)
        shutil.rmtree(staged, ignore_errors=True)
        ray.get(self.r_learner.save_pretrained.remote(str(staged)))
        commit_directory(staged, out_dir)
        return out_dir

    def shutdown(self) -> None:
        """Stop G's learner and pool and R's learner."""
        self.g_pool.shutdown()
        self.g_learner.shutdown()
        ray.kill(self.r_learner)


def reward_objective(cfg: Config) -> RewardObjective:
    """R's objective from the config: a verifier head starts spanning the graded targets."""
    targets = (cfg.graded.faithful, cfg.graded.perturbed, cfg.graded.incoherent, cfg.graded.irrelevant)
    return RewardObjective(verifier=cfg.cycle.rm_verifier, answer_loss=cfg.cycle.rm_answer_loss,
                           low=min(targets), high=max(targets))


def _fresh_dir(path: Path) -> None:
    """An empty directory at `path`: a partial earlier attempt's files are replaced, never appended to."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)

