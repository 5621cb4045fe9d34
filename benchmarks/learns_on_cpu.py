"""Does the solver learn on CPU? Held-out accuracy of tiny models trained from scratch (issue 8).

Three measurements, each on a modality-balanced test set built from held-out studies only (split by
study, never by slice), 4 options whose distractors are the test set's own modalities:
1. learns:    untrained vs SFT (on template seeds from the training studies) for 3 seeds/splits;
              accuracy by length-normalised option likelihood, strict greedy exact match beside it, and
              the image-blind bound (the best fixed option ordering, computed exactly).
2. selection: with a finished run's generated candidates (`--run runs/<name>`, scored by its reward
              model), SFT on the reward-top-K (the cycle's balanced selection) vs a random K of the same
              candidates, same seeds.
3. grpo:      GRPO after SFT vs an equal-time SFT control (`--grpo-seconds`).
Runs in one process per measurement (no Ray: this measures learning, not orchestration). Writes
`benchmarks/results/learns_on_cpu.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from medgr2_ray.config import Config, load_config  # noqa: E402
from medgr2_ray.algo.selection import select_samples  # noqa: E402
from medgr2_ray.data.store import read_samples  # noqa: E402
from medgr2_ray.data.seedpool import load_configured_pool  # noqa: E402
from medgr2_ray.eval.protocols import accuracy_table, answer_agreement  # noqa: E402
from medgr2_ray.loop.cycle import prepare_data  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.loop.solver_sft import balanced_weights, batch_indices  # noqa: E402
from medgr2_ray.loop.transfer import predict  # noqa: E402
from medgr2_ray.loop.stages import solver_sft_examples  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402
from medgr2_ray.types import Sample, TaskType  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def split_data(cfg: Config, seed: int) -> tuple[list[Sample], list[Sample], dict[str, np.ndarray]]:
    """Training seeds (modality questions only, 4 per image) and the balanced held-out test set of one
    seed's study split: the cycle's own `prepare_data`, so the benchmark measures what the main job trains."""
    data = prepare_data(cfg.model_copy(update={
        "run": cfg.run.model_copy(update={"seed": seed}),
        "cycle": cfg.cycle.model_copy(update={"tasks": ["Modality Recognition"], "seeds_per_image": 4}),
    }))
    pixels = {i.image_id: data.pool.read_rgb(i) for i in data.pool.images}
    return data.seeds, data.test_samples, pixels


def evaluate(learner: PolicyLearner, cfg: Config, test: list[Sample], pixels: dict[str, np.ndarray]) -> dict:
    """Likelihood accuracy and greedy exact match, scored as the transfer protocols score them."""
    likely, greedy = predict(learner, cfg, test, pixels.__getitem__, greedy=True)
    return {**asdict(accuracy_table(test, likely)), "greedy_accuracy": accuracy_table(test, greedy or []).accuracy}


def sft(learner: PolicyLearner, cfg: Config, train: list[Sample], pixels: dict[str, np.ndarray], steps: int,
        seed: int, seconds: float | None = None) -> int:
    """Balanced, augmented SFT for `steps` steps (or until `seconds` pass); returns steps done."""
    weights = balanced_weights([s.modality.value for s in train])
    start, done = time.perf_counter(), 0
    while done < steps and (seconds is None or time.perf_counter() - start < seconds):
        idx = batch_indices(weights, cfg.solver.sft_batch_size, seed, learner.version)
        rng = np.random.default_rng([seed, learner.version])
        learner.sft_step(solver_sft_examples([train[i] for i in idx], pixels.__getitem__, rng))
        done += 1
    return done


def new_learner(cfg: Config, seed: int) -> PolicyLearner:
    model_dir = ensure_model_dir(cfg.policy, cfg.data.cache_dir, seed, "policy")
    return PolicyLearner(model_dir, cfg.policy, cfg.learner, cfg.grpo, seed)


def learn_one(cfg: Config, seed: int, steps: int) -> dict:
    """One seed's split: the untrained solver, then SFT on the training studies' seeds, both evaluated."""
    torch.set_num_threads(1)  # also in worker processes (--jobs): one thread each shares 2 cores best
    train, test, pixels = split_data(cfg, seed)
    learner = new_learner(cfg, seed)
    before = evaluate(learner, cfg, test, pixels)
    t0 = time.perf_counter()
    sft(learner, cfg, train, pixels, steps, seed)
    after = evaluate(learner, cfg, test, pixels)
    print(f"seed {seed}: untrained {before['accuracy']:.1%} -> SFT {after['accuracy']:.1%} "
          f"(greedy {after['greedy_accuracy']:.1%}, blind {after['blind_bound']:.1%})", flush=True)
    return {"seed": seed, "train_samples": len(train), "test_samples": len(test), "sft_steps": steps,
            "sft_seconds": time.perf_counter() - t0, "untrained": before, "sft": after}


def measure_learns(cfg: Config, seeds: list[int], steps: int, jobs: int = 1) -> dict:
    """Every seed (in `jobs` processes: the seeds are independent and each is deterministic)."""
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(learn_one, [cfg] * len(seeds), seeds, [steps] * len(seeds)))
    else:
        rows = [learn_one(cfg, seed, steps) for seed in seeds]
    accs = [r["sft"]["accuracy"] for r in rows]
    return {"rows": rows, "mean": float(np.mean(accs)), "min": float(np.min(accs)),
            "gain_over_untrained": float(np.mean(accs) - np.mean([r["untrained"]["accuracy"] for r in rows]))}


def measure_selection(cfg: Config, run: Path, seeds: list[int], steps: int) -> dict:
    """Reward-top-K vs random-K of one run's generated candidates (modality questions), same K and seeds."""
    # Modality questions only: the held-out test asks for the modality, so an anatomy question in one
    # subset and not in the other would change what is measured, not how well R selects.
    candidates = [s for p in sorted((run / "data").glob("round_*/samples.jsonl")) for s in read_samples(p)
                  if s.provenance.reward is not None and np.isfinite(s.provenance.reward)
                  and s.task_type == TaskType.MODALITY]
    if len(candidates) < 2:
        raise SystemExit(f"{run}: {len(candidates)} scored candidates under data/round_*/samples.jsonl; "
                         "run `medgr2 run` first (with at least one round) and pass its run directory")
    # The cycle's own selection (reward order, balanced over modality and task, near-duplicates out): a
    # plain global top-K kept no fundus, X-ray or histopathology image here, and the test asks about them.
    wanted = min(len(candidates) - 1, max(8, len(candidates) // 4))
    rule = cfg.selection.model_copy(update={"mode": "reward", "top_k": wanted, "tau": None, "balance": True})
    top = list(select_samples(candidates, rule, seed=0).kept)
    k = len(top)
    _, test, pixels = split_data(cfg, 0)  # the run's own split (seed 0) keeps its test studies unseen
    images = {i.image_id: i for i in load_configured_pool(cfg.data.pool, cfg.data.cache_dir).images}
    out = {"candidates": len(candidates), "k": k, "rows": [],
           # does R pick faithful samples? (modality answers checked against the image's metadata)
           "faithful_all": answer_agreement(candidates, images), "faithful_top_k": answer_agreement(top, images),
           "auroc": reward_auroc(candidates, images)}
    for seed in seeds:
        rnd = random.Random(seed).sample(candidates, k)
        row = {"seed": seed, "faithful_random_k": answer_agreement(rnd, images)}
        for name, subset in (("top_k", top), ("random_k", rnd)):
            learner = new_learner(cfg, seed)
            sft(learner, cfg, subset, pixels, steps, seed)
            row[name] = evaluate(learner, cfg, test, pixels)["accuracy"]
        out["rows"].append(row)
        print(f"selection seed {seed}: top-K {row['top_k']:.1%} vs random-K {row['random_k']:.1%}", flush=True)
    return out


def reward_auroc(candidates: list[Sample], images: dict) -> float | None:
    """P(a faithful candidate's reward > an unfaithful one's), ties half: how well R ranks by faithfulness."""
    from medgr2_ray.data.vocab import modality_from_text

    faithful = np.array([modality_from_text(s.answer) == images[s.image_id].modality for s in candidates])
    rewards = np.array([float(s.provenance.reward) for s in candidates])
    pos, neg = rewards[faithful], rewards[~faithful]
    if not len(pos) or not len(neg):
        return None
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))


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
        met = learns["mean"] >= 0.65 and learns["min"] >= 0.55 and learns["gain_over_untrained"] >= 0.30
        lines.append(f"\nGoal: mean >= 65%, every seed >= 55%, >= 30 points over untrained. Measured mean "
                     f"{learns['mean']:.1%}, min {learns['min']:.1%}, gain {learns['gain_over_untrained']:.1%} -> "
                     f"{'MET' if met else 'NOT MET'}.")
    selection = result.get("selection")
    if selection:
        pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
        lines += ["", f"Selection: {selection['candidates']} scored candidates of one run, K = {selection['k']}. "
                      f"Faithful modality answers: all candidates {pct(selection.get('faithful_all'))}, "
                      f"reward-top-K {pct(selection.get('faithful_top_k'))}; AUROC of R's reward for faithfulness "
                      f"{selection['auroc'] if selection.get('auroc') is None else round(selection['auroc'], 3)}.", "",
                  "| seed | SFT on reward-top-K | SFT on random K | faithful in random K |", "|---|---|---|---|"]
        lines += [f"| {r['seed']} | {r['top_k']:.1%} | {r['random_k']:.1%} | {pct(r.get('faithful_random_k'))} |"
                  for r in selection["rows"]]
        better = all(r["top_k"] > r["random_k"] for r in selection["rows"])
        lines.append(f"\nGoal: top-K beats random-K on every seed -> {'MET' if better else 'NOT MET'}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run", type=Path, help="a finished run directory for the selection measurement")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", choices=["learns", "selection"], default=None)
    parser.add_argument("--jobs", type=int, default=1, help="seeds of the learns measurement run in parallel")
    parser.add_argument("--out", default=None, help="result file name (default learns_on_cpu[_ONLY])")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["learner.schedule=cosine", f"learner.schedule_steps={args.steps}",
                             "policy.tiny.image_size=112", *args.overrides])
    result: dict = {"machine": machine(), "settings": {"steps": args.steps, "seeds": args.seeds,
                                                            "overrides": args.overrides}}
    if args.only in (None, "learns"):
        result["learns"] = measure_learns(cfg, args.seeds, args.steps, args.jobs)
    if args.run is not None and args.only in (None, "selection"):
        result["selection"] = measure_selection(cfg, args.run, args.seeds, args.steps)
    RESULTS.mkdir(exist_ok=True)
    name = args.out or "learns_on_cpu" + (f"_{args.only}" if args.only else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
