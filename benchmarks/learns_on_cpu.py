"""Does the solver learn on CPU? Held-out accuracy of tiny models trained from scratch (issue 8).

Two measurements, each on a modality-balanced test set built from held-out studies only (split by
study, never by slice), 4 options whose distractors are the test set's own modalities:
1. learns:    untrained vs SFT (on template seeds from the training studies) for 3 seeds/splits;
              accuracy by length-normalised option likelihood, strict greedy exact match beside it, and
              the image-blind bound (the best fixed option ordering, computed exactly).
2. selection: with a finished run's generated candidates (`--run runs/<name>`, or with `--only selection`
              `--runs`, one run per study split; scored by its reward model), SFT on the reward-selected
              samples (the run's own rule: tau, top-K, balanced, from its config.yaml) vs a
              random subset of the same size, same init and seeds, on the run's own split.
3. solver:    the MedGR² solver as the cycle trains it: with one finished run per study split
              (`--runs`, each made with `--set run.seed=N`), SFT on the template seeds beside that run's
              selection, against the seeds alone and beside a random subset of the same size.
GRPO against an equal-time SFT control is benchmarks/grpo_vs_sft.py. Each seed runs in its own process
(with `--jobs`, in parallel; no Ray: this measures learning, not orchestration). Writes
`benchmarks/results/learns_on_cpu.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LEARNING_GOAL, learning_goal_met, machine, sign_test  # noqa: E402

from medgr2_ray.config import Config, SelectionConfig, load_config  # noqa: E402
from medgr2_ray.algo.selection import select_samples  # noqa: E402
from medgr2_ray.data.store import read_samples  # noqa: E402
from medgr2_ray.data.seedpool import load_configured_pool  # noqa: E402
from medgr2_ray.eval.protocols import accuracy_table, answer_agreement  # noqa: E402
from medgr2_ray.eval.rundata import prepare_data  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.algo.batches import balanced_weights, batch_indices  # noqa: E402
from medgr2_ray.learner.solver import predict  # noqa: E402
from medgr2_ray.algo.requests import solver_sft_examples  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402
from medgr2_ray.types import Sample, TaskType  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Split:
    """One study split: training seeds, the balanced held-out test, every pool image's pixels."""

    seeds: list[Sample]
    test: list[Sample]
    pixels: dict[str, np.ndarray]
    train_image_ids: frozenset[str]


def split_data(cfg: Config, seed: int) -> Split:
    """Training seeds (modality questions only, 4 per image) and the balanced held-out test set of one
    seed's study split: the cycle's own `prepare_data`, so the benchmark measures what the main job trains."""
    data = prepare_data(cfg.model_copy(update={
        "run": cfg.run.model_copy(update={"seed": seed}),
        "cycle": cfg.cycle.model_copy(update={"tasks": ["Modality Recognition"], "seeds_per_image": 4}),
    }))
    pixels = {i.image_id: data.pool.read_rgb(i) for i in data.pool.images}
    return Split(data.seeds, data.test_samples, pixels, frozenset(i.image_id for i in data.train))


def evaluate(learner: PolicyLearner, cfg: Config, test: list[Sample], pixels: dict[str, np.ndarray]) -> dict:
    """Likelihood accuracy and greedy exact match, scored as the transfer protocols score them."""
    likely, greedy = predict(learner, cfg, test, pixels.__getitem__, greedy=True)
    return {**asdict(accuracy_table(test, likely)), "greedy_accuracy": accuracy_table(test, greedy or []).accuracy,
            "confusion": confusion(test, likely)}


def confusion(test: list[Sample], picks: list[str]) -> dict[str, dict[str, int]]:
    """How often each true modality was answered as each option (by likelihood): where errors go."""
    counts: dict[str, Counter[str]] = {}
    for sample, pick in zip(test, picks, strict=True):
        counts.setdefault(sample.modality.value, Counter())[pick] += 1
    return {truth: dict(row) for truth, row in counts.items()}


def sft(learner: PolicyLearner, cfg: Config, train: list[Sample], pixels: dict[str, np.ndarray], steps: int,
        seed: int, seconds: float | None = None) -> int:
    """Balanced, augmented SFT for `steps` steps (or until `seconds` pass); returns steps done."""
    weights = balanced_weights([s.modality.value for s in train])
    start, done = time.perf_counter(), 0
    while done < steps and (seconds is None or time.perf_counter() - start < seconds):
        idx = batch_indices(weights, cfg.solver.sft_batch_size, seed, learner.version)
        rng = np.random.default_rng([seed, learner.version])
        learner.sft_step(solver_sft_examples([train[i] for i in idx], pixels.__getitem__, rng,
                                             cfg.solver.augmentation))
        done += 1
    return done


def new_learner(cfg: Config, seed: int) -> PolicyLearner:
    model_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, seed, "policy")
    return PolicyLearner(model_dir, cfg.policy, cfg.learner, cfg.grpo, seed)


def learn_one(seed: int, cfg: Config, steps: int) -> dict:
    """One seed's split: the untrained solver, then SFT on the training studies' seeds, both evaluated."""
    torch.set_num_threads(1)  # also in worker processes (--jobs): one thread each shares 2 cores best
    split = split_data(cfg, seed)
    train, test, pixels = split.seeds, split.test, split.pixels
    learner = new_learner(cfg, seed)
    before = evaluate(learner, cfg, test, pixels)
    t0 = time.perf_counter()
    sft(learner, cfg, train, pixels, steps, seed)
    after = evaluate(learner, cfg, test, pixels)
    print(f"seed {seed}: untrained {before['accuracy']:.1%} -> SFT {after['accuracy']:.1%} "
          f"(greedy {after['greedy_accuracy']:.1%}, blind {after['blind_bound']:.1%})", flush=True)
    return {"seed": seed, "train_samples": len(train), "test_samples": len(test), "sft_steps": steps,
            "sft_seconds": time.perf_counter() - t0, "untrained": before, "sft": after}


def per_seed(fn: Callable[..., dict], jobs: int, seeds: list[int], *args: Any) -> list[dict]:
    """`fn(seed, *args)` for every seed, in `jobs` spawned processes when > 1 (the seeds are independent
    and each is deterministic, so the rows do not depend on `jobs`)."""
    if jobs <= 1:
        return [fn(seed, *args) for seed in seeds]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, seeds, *[[a] * len(seeds) for a in args]))


def measure_learns(cfg: Config, seeds: list[int], steps: int, jobs: int = 1) -> dict:
    """Every seed's split, untrained and after SFT."""
    return summarise(per_seed(learn_one, jobs, seeds, cfg, steps), "sft")


def summarise(rows: list[dict], trained: str) -> dict:
    """The rows with the learning goal's numbers for the `trained` arm: mean, min, gain over untrained."""
    accs = [r[trained]["accuracy"] for r in rows]
    return {"rows": rows, "mean": float(np.mean(accs)), "min": float(np.min(accs)),
            "gain_over_untrained": float(np.mean(accs) - np.mean([r["untrained"]["accuracy"] for r in rows]))}


@dataclass(frozen=True)
class SelectionJob:
    """One training seed on one run's candidates: the unit the selection measurement parallelises."""

    run: Path
    seed: int


def select_one(job: SelectionJob, cfg: Config, steps: int, with_seeds: bool = False) -> dict:
    """One training seed on one run: SFT a fresh solver on the reward-selected samples and another on a
    random subset of the same size drawn (with this seed) from the same candidates (with `with_seeds`, each
    beside the training studies' template seeds, as the cycle's solver trains); same init and seed for
    both, evaluated on the held-out test of the split the run was made on."""
    torch.set_num_threads(1)
    run = load_run(cfg, job.run)
    top = cycle_selection(run)
    rnd = random.Random(job.seed).sample(run.candidates, len(top))
    base = run.split.seeds if with_seeds else []
    row: dict = {"seed": job.seed, "random_k_ids": [s.sample_id for s in rnd]}
    for name, subset in (("top_k", top), ("random_k", rnd)):
        learner = new_learner(cfg, job.seed)
        sft(learner, cfg, base + subset, run.split.pixels, steps, job.seed)
        row[name] = evaluate(learner, cfg, run.split.test, run.split.pixels)["accuracy"]
    print(f"selection {job.run} (split {run.split_seed}) seed {job.seed}: top-K {row['top_k']:.1%} vs "
          f"random-K {row['random_k']:.1%}", flush=True)
    return row


def untrained_reference(cfg: Config, split: Split) -> dict:
    """What the selection rows compare against on their test set: the untrained solver (init seed 0) and the
    blind bound."""
    ev = evaluate(new_learner(cfg, 0), cfg, split.test, split.pixels)
    return {"untrained": ev["accuracy"], "blind_bound": ev["blind_bound"]}


@dataclass(frozen=True)
class RunData:
    """A finished run's study split (from its config) and its scored candidates, all training images."""

    split_seed: int
    split: Split
    candidates: list[Sample]
    rule: SelectionConfig
    kept: list[Sample] | None = None  # a continuous run's kept modality questions (None: a rounds run)


def load_run(cfg: Config, run: Path) -> RunData:
    """The run's split and candidates; refuses a run whose candidates show that split's held-out studies."""
    run_cfg = load_config(run / "config.yaml")
    split_seed = run_cfg.run.seed
    split = split_data(cfg, split_seed)
    candidates = run_candidates(run)
    leaked = sorted({s.image_id for s in candidates} - split.train_image_ids)
    if leaked:  # the run was made with another pool or split: its candidates would show the test studies
        raise SystemExit(f"{run}: {len(leaked)} candidate images are not training images of split {split_seed} "
                         f"(e.g. {leaked[0]}); pass runs made with `--set run.seed=N` at this pool")
    # The flywheel selects as the stream goes (its window, quotas and guard): what it kept is its selection.
    kept = (None if run_cfg.cycle.mode == "rounds" else
            [s for s in read_samples(run / "data" / "stream" / "kept.jsonl") if s.task_type == TaskType.MODALITY])
    return RunData(split_seed, split, candidates, selection_rule(run_cfg), kept)


def run_candidates(run: Path) -> list[Sample]:
    """A finished run's scored, generated modality questions (every round)."""
    # Modality questions only: the held-out test asks for the modality, so an anatomy question in one
    # subset and not in the other would change what is measured, not how well R selects.
    logs = sorted((run / "data").glob("round_*/samples.jsonl")) + sorted((run / "data").glob("stream/samples.jsonl"))
    candidates = [s for p in logs for s in read_samples(p)
                  if s.provenance.reward is not None and np.isfinite(s.provenance.reward)
                  and s.task_type == TaskType.MODALITY]
    if len(candidates) < 2:
        raise SystemExit(f"{run}: {len(candidates)} scored candidates under data/round_*/ or data/stream/samples.jsonl; "
                         "run `medgr2 run` first (with at least one round) and pass its run directory")
    return candidates


def selection_rule(cfg: Config) -> SelectionConfig:
    """A run's own selection rule (`cfg.selection`: tau, top-K, balanced, near-duplicates out), by reward
    even where the run was an ablation."""
    return cfg.selection.model_copy(update={"mode": "reward"})


def cycle_selection(data: RunData) -> list[Sample]:
    """The samples the cycle kept of these candidates: the flywheel's kept stream, or the rounds' rule
    (tau, top-K, balanced) applied to them."""
    if data.kept is not None:
        return data.kept
    return list(select_samples(data.candidates, data.rule, seed=0).kept)


def pool_images(cfg: Config) -> dict:
    """The configured pool's images by id (their metadata says which answers are faithful)."""
    return {i.image_id: i for i in load_configured_pool(cfg.data.pool, cfg.data.cache_dir).images}


def measure_selection(cfg: Config, runs: list[Path], seeds: list[int], steps: int, jobs: int = 1,
                      with_seeds: bool = False) -> list[dict]:
    """Reward-selected vs random samples of each run's generated candidates (modality questions), every
    training seed on every run (all pairs in parallel with `jobs`)."""
    pairs = [SelectionJob(run, seed) for run in runs for seed in seeds]
    rows = per_seed(select_one, jobs, pairs, cfg, steps, with_seeds)
    images = pool_images(cfg)
    out = []
    for run in runs:
        data = load_run(cfg, run)
        top = cycle_selection(data)
        entry = {"run": str(run), "split": data.split_seed, "candidates": len(data.candidates), "k": len(top),
                 "with_seeds": with_seeds, "rule": data.rule.model_dump(mode="json"),
                 # does R pick faithful samples? (modality answers checked against the image's metadata)
                 "faithful_all": answer_agreement(data.candidates, images),
                 "faithful_top_k": answer_agreement(top, images), "auroc": reward_auroc(data.candidates, images),
                 **untrained_reference(cfg, data.split)}
        by_id = {s.sample_id: s for s in data.candidates}
        entry["rows"] = [{**{k: v for k, v in row.items() if k != "random_k_ids"},
                          "faithful_random_k": answer_agreement([by_id[i] for i in row["random_k_ids"]], images)}
                         for pair, row in zip(pairs, rows, strict=True) if pair.run == run]
        out.append(entry)
    return out


def solver_one(run: Path, cfg: Config, steps: int) -> dict:
    """One study split as the MedGR² cycle trains its solver: a fresh solver by SFT on the template seeds
    alone, beside a random K of the run's candidates, and beside the cycle's selected K (what the main
    job's solver trains on), all from the same init and seed; `run` was made with this split's seed."""
    torch.set_num_threads(1)
    data = load_run(cfg, run)
    split, candidates = data.split_seed, data.candidates
    seeds, test, pixels = data.split.seeds, data.split.test, data.split.pixels
    top = cycle_selection(data)
    rnd = random.Random(split).sample(candidates, len(top))
    images = pool_images(cfg)
    row: dict = {"run": str(run), "seed": split, "candidates": len(candidates), "k": len(top),
                 "faithful_all": answer_agreement(candidates, images), "faithful_top_k": answer_agreement(top, images),
                 "faithful_random_k": answer_agreement(rnd, images),
                 "untrained": evaluate(new_learner(cfg, split), cfg, test, pixels)}
    for name, extra in (("seeds_only", []), ("seeds_random_k", rnd), ("seeds_top_k", top)):
        learner = new_learner(cfg, split)
        sft(learner, cfg, seeds + extra, pixels, steps, split)
        row[name] = evaluate(learner, cfg, test, pixels)
    print(f"solver split {split}: untrained {row['untrained']['accuracy']:.1%}, seeds {row['seeds_only']['accuracy']:.1%}, "
          f"+random-K {row['seeds_random_k']['accuracy']:.1%}, +top-K {row['seeds_top_k']['accuracy']:.1%}", flush=True)
    return row


def measure_solver(cfg: Config, runs: list[Path], steps: int, jobs: int = 1) -> dict:
    """The MedGR² solver (template seeds + the cycle's selection) over one run per study split."""
    return summarise(per_seed(solver_one, jobs, runs, cfg, steps), "seeds_top_k")


def reward_auroc(candidates: list[Sample], images: dict) -> float | None:
    """P(a faithful candidate's reward > an unfaithful one's), ties half: how well R ranks by faithfulness."""
    from medgr2_ray.data.vocab import modality_from_text

    faithful = np.array([modality_from_text(s.answer) == images[s.image_id].modality for s in candidates])
    rewards = np.array([float(s.provenance.reward) for s in candidates])
    pos, neg = rewards[faithful], rewards[~faithful]
    if not len(pos) or not len(neg):
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def confusion_lines(tables: list[dict[str, dict[str, int]]], what: str = "SFT, all seeds summed") -> list[str]:
    """Markdown of the seeds' summed confusion after SFT (rows: true modality; columns: answer)."""
    summed: dict[str, Counter[str]] = {}
    for table in tables:
        for truth, row in table.items():
            summed.setdefault(truth, Counter()).update(row)
    if not summed:
        return []
    picks = sorted({p for row in summed.values() for p in row})
    head = ["", f"Answers after {what} (rows: the true modality):", "",
            "| true \\ answered | " + " | ".join(picks) + " |", "|---" * (len(picks) + 1) + "|"]
    return head + [f"| {t} | " + " | ".join(str(summed[t].get(p, 0)) for p in picks) + " |" for t in sorted(summed)]


def goal_line(name: str, summary: dict) -> str:
    """The issue's learning goal checked on a summary with mean, min and gain over untrained."""
    met = learning_goal_met(summary)
    return (f"\nGoal ({name}): {LEARNING_GOAL}. Measured mean "
            f"{summary['mean']:.1%}, min {summary['min']:.1%}, gain {summary['gain_over_untrained']:.1%} -> "
            f"{'MET' if met else 'NOT MET'}.")


def solver_lines(solver: dict) -> list[str]:
    """Markdown of the MedGR² solver measurement: seeds alone, + random K, + the cycle's top-K, per split."""
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    lines = ["", "The MedGR² solver: SFT on the template seeds beside the cycle's selection (a rounds run: tau, "
                 "top-K, balanced; a continuous run: what its stream kept) of a run made on the same study split, against the seeds alone and the seeds beside a "
                 "random K of the same candidates (same init, seed and steps; held-out studies only):", "",
             "| split | candidates (faithful) | K (faithful top-K / random K) | untrained | seeds only | "
             "seeds + random K | seeds + top-K (greedy) | blind bound | per modality (seeds + top-K) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in solver["rows"]:
        top = r["seeds_top_k"]
        per = ", ".join(f"{k} {v:.0%}" for k, v in top["by_modality"].items())
        lines.append(f"| {r['seed']} | {r['candidates']} ({pct(r['faithful_all'])}) | {r['k']} "
                     f"({pct(r['faithful_top_k'])} / {pct(r['faithful_random_k'])}) | {r['untrained']['accuracy']:.1%} | "
                     f"{r['seeds_only']['accuracy']:.1%} | {r['seeds_random_k']['accuracy']:.1%} | {top['accuracy']:.1%} "
                     f"({top['greedy_accuracy']:.1%}) | {top['blind_bound']:.1%} | {per} |")
    lines.append(goal_line("the MedGR² solver, seeds + top-K", solver))
    better = sum(r["seeds_top_k"]["accuracy"] > r["seeds_random_k"]["accuracy"] for r in solver["rows"])
    lines.append(f"Selection beside the seeds: top-K beats random K on {better} of {len(solver['rows'])} splits -> "
                 f"{'MET' if better == len(solver['rows']) else 'NOT MET'}.")
    return lines + confusion_lines([r["seeds_top_k"].get("confusion", {}) for r in solver["rows"]],
                                   "SFT on seeds + top-K, all splits summed")


def selection_lines(entry: dict, heading: bool = False) -> list[str]:
    """Markdown of one run's selection measurement: top-K vs random K per training seed, R's faithfulness."""
    lines = [f"\n## {entry['run']} (study split {entry['split']})"] if heading else []
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    lines += ["", f"Selection: {entry['candidates']} scored candidates of one run, K = {entry['k']} "
                  f"(rule: {json.dumps(entry.get('rule'))}). "
                  f"Faithful modality answers: all candidates {pct(entry.get('faithful_all'))}, "
                  f"reward-top-K {pct(entry.get('faithful_top_k'))}; AUROC of R's reward for faithfulness "
                  f"{entry['auroc'] if entry.get('auroc') is None else round(entry['auroc'], 3)}.", "",
              "| seed | SFT on reward-top-K | SFT on random K | faithful in random K |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['top_k']:.1%} | {r['random_k']:.1%} | {pct(r.get('faithful_random_k'))} |"
              for r in entry["rows"]]
    better = all(r["top_k"] > r["random_k"] for r in entry["rows"])
    lines.append(f"\nGoal: top-K beats random-K on every seed -> {'MET' if better else 'NOT MET'}"
                 f"{' (each subset beside the template seeds)' if entry.get('with_seeds') else ''}.")
    if "untrained" in entry:
        top_mean = float(np.mean([r["top_k"] for r in entry["rows"]]))
        rnd_mean = float(np.mean([r["random_k"] for r in entry["rows"]]))
        # Why top-K wins where it stays under the blind bound: random's wrong answers cost accuracy (random
        # under untrained), or the selected ones teach a little that random does not (random at untrained).
        why = ("the random subset's wrong answers cost accuracy, the selected ones do not yet teach it"
               if rnd_mean < entry["untrained"] else
               f"random K mean {rnd_mean:.1%}: the selected samples teach some recognition, too little to pass it")
        lines.append(f"For scale, on the same test set: the untrained solver {entry['untrained']:.1%}, the "
                     f"image-blind bound {entry['blind_bound']:.1%}; top-K mean {top_mean:.1%}"
                     + (f" (no better than the blind bound: {why})" if top_mean <= entry["blind_bound"] else "")
                     + ".")
    return lines


def selection_summary(entries: list[dict]) -> list[str]:
    """Across runs (study splits): mean over training seeds of top-K and random K, and the goal."""
    lines = ["", "## Across study splits", "",
             "| split | K | faithful top-K / all | top-K (mean over seeds) | random K (mean) | pairs top-K > random |",
             "|---|---|---|---|---|---|"]
    wins = 0
    for e in entries:
        top, rnd = np.mean([r["top_k"] for r in e["rows"]]), np.mean([r["random_k"] for r in e["rows"]])
        wins += bool(top > rnd)
        pairs = sum(r["top_k"] > r["random_k"] for r in e["rows"])
        lines.append(f"| {e['split']} | {e['k']} | {e['faithful_top_k']:.1%} / {e['faithful_all']:.1%} | {top:.1%} | "
                     f"{rnd:.1%} | {pairs} of {len(e['rows'])} |")
    all_rows = [r for e in entries for r in e["rows"]]
    pairs = sum(r["top_k"] > r["random_k"] for r in all_rows)
    diffs = np.array([r["top_k"] - r["random_k"] for r in all_rows])
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    lines.append(f"\nGoal: SFT on the reward-top-K beats SFT on a random K of the same candidates (same init and "
                 f"seeds) on every study split, mean over training seeds: {wins} of {len(entries)} splits -> "
                 f"{'MET' if wins == len(entries) else 'NOT MET'}; {pairs} of {len(all_rows)} (split, seed) pairs; "
                 f"mean top-K {np.mean([r['top_k'] for r in all_rows]):.1%} vs random "
                 f"{np.mean([r['random_k'] for r in all_rows]):.1%}.")
    lines.append(f"Paired difference (top-K - random K, same split, init and seed): mean {100 * diffs.mean():+.1f} "
                 f"points, standard error {100 * se:.1f}; sign test over the pairs (ties dropped) two-sided p = "
                 f"{sign_test(int((diffs > 0).sum()), int((diffs < 0).sum())):.3f}.")
    return lines


def markdown(result: dict) -> str:
    """A short table of the learning measurement, with the issue's goals checked honestly."""
    lines = [f"# learns_on_cpu\n\nSettings: {json.dumps(result['settings'])}; machine load at start "
             f"{result['machine'].get('loadavg_at_start', '?')}.\n"]
    learns = result.get("learns")
    if learns:
        lines += ["| seed | untrained | SFT (likelihood) | SFT (greedy) | image-blind bound | per modality |",
                  "|---|---|---|---|---|---|"]
        for r in learns["rows"]:
            per = ", ".join(f"{k} {v:.0%}" for k, v in r["sft"]["by_modality"].items())
            lines.append(f"| {r['seed']} | {r['untrained']['accuracy']:.1%} | {r['sft']['accuracy']:.1%} | "
                         f"{r['sft']['greedy_accuracy']:.1%} | {r['sft']['blind_bound']:.1%} | {per} |")
        lines.append(goal_line("template seeds only", learns))
        lines += confusion_lines([r["sft"].get("confusion", {}) for r in learns["rows"]])
    selection = result.get("selection")
    entries = [selection] if isinstance(selection, dict) else selection or []  # one run (older results) or a list
    for entry in entries:
        lines += selection_lines(entry, heading=len(entries) > 1)
    if len(entries) > 1:
        lines += selection_summary(entries)
    if result.get("solver"):
        lines += solver_lines(result["solver"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run", type=Path, help="a finished run directory for the selection measurement "
                        "(or, with --only selection, --runs: one per study split, every --seeds on each)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs", type=Path, nargs="+", default=[],
                        help="the MedGR² solver: one finished run per study split (each made with its own "
                             "--set run.seed=N); SFT on seeds + its selection vs seeds alone and + random K")
    parser.add_argument("--only", choices=["learns", "selection", "solver"], default=None)
    parser.add_argument("--jobs", type=int, default=1, help="processes: the seeds run in parallel")
    parser.add_argument("--with-seeds", action="store_true",
                        help="selection: train each subset beside the template seeds (as the cycle's solver does)")
    parser.add_argument("--out", default=None, help="result file name (default learns_on_cpu[_ONLY])")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # The selection measurements apply each run's own rule (its config.yaml's selection), read, not restated.
    cfg = load_config(None, ["learner.schedule=cosine", f"learner.schedule_steps={args.steps}",
                             "policy.tiny.image_size=112", *args.overrides])
    result: dict = {"machine": machine(), "settings": {"steps": args.steps, "seeds": args.seeds,
                                                            "overrides": args.overrides,
                                                            "runs": [str(r) for r in args.runs]}}
    if args.only in (None, "learns"):
        result["learns"] = measure_learns(cfg, args.seeds, args.steps, args.jobs)
    # selection: on --run (one run), or with --only selection on every --runs run (one per study split)
    selection_runs = [args.run] if args.run is not None else args.runs if args.only == "selection" else []
    if selection_runs and args.only in (None, "selection"):
        result["selection"] = measure_selection(cfg, selection_runs, args.seeds, args.steps, args.jobs,
                                                args.with_seeds)
    if args.runs and args.only in (None, "solver"):
        result["solver"] = measure_solver(cfg, args.runs, args.steps, args.jobs)
    RESULTS.mkdir(exist_ok=True)
    name = args.out or "learns_on_cpu" + (f"_{args.only}" if args.only else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
