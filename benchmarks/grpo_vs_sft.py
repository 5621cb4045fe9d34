"""Does GRPO add over SFT? GRPO after SFT vs an equal-time SFT control, same start, same seeds (issue 8).

For each seed (= study split): SFT from scratch on the template seeds as in `learns_on_cpu.py`, save,
evaluate; then two branches start from that same checkpoint with the same constant learning rate:
- grpo:    `--seconds` of GRPO (engine rollouts, groups of `grpo.group_size`, reward = strict answer
           accuracy; no reward-model term, so this is the "GRPO without RM" ablation's solver side),
- control: `--seconds` more of the same augmented, modality-balanced SFT.
Both are evaluated on the same held-out, modality-balanced test set (length-normalised likelihood and
greedy exact match). Wall time is the budget; the steps each branch got are reported beside it, and the
branches run one after the other on the same machine, so load changes can favour either: read the
machine load in the result. No Ray: this measures learning, not orchestration.

    python benchmarks/grpo_vs_sft.py [--seeds 0 1 2] [--sft-steps 1200] [--seconds 90]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from learns_on_cpu import RESULTS, evaluate, new_learner, sft, split_data  # noqa: E402

from medgr2_ray.algo.rewards import extract_answer  # noqa: E402
from medgr2_ray.config import Config, load_config  # noqa: E402
from medgr2_ray.engines.hf import HFEngine  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.algo.batches import balanced_weights, batch_indices  # noqa: E402
from medgr2_ray.algo.requests import solver_requests  # noqa: E402
from medgr2_ray.types import Sample, SamplingParams, ScoredGroup  # noqa: E402


def grpo(learner: PolicyLearner, cfg: Config, train: list[Sample], pixels: dict[str, np.ndarray], seconds: float,
         seed: int) -> dict[str, float]:
    """GRPO for `seconds`: balanced prompts, engine rollouts with the learner's current weights,
    reward 1 for the right option else 0; returns steps, mean reward first/last, share of groups with signal."""
    engine = HFEngine(learner.loaded.path, cfg.policy, cfg.engine, seed=seed)
    engine.load_weights(learner.export_weights(), learner.version)
    g = cfg.grpo.group_size
    sampling = SamplingParams(n=g, temperature=cfg.grpo.temperature, max_new_tokens=cfg.grpo.max_new_tokens)
    weights = balanced_weights([s.modality.value for s in train])
    rewards: list[float] = []
    signal: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = [train[i] for i in batch_indices(weights, cfg.grpo.prompts_per_step, seed + 7, learner.version)]
        requests = solver_requests(batch, pixels.__getitem__)
        rollouts = engine.generate(requests, sampling)
        groups = []
        for k, (request, sample) in enumerate(zip(requests, batch)):
            mine = tuple(rollouts[k * g:(k + 1) * g])
            scores = np.asarray([float(extract_answer(r.text, sample.options) == sample.answer) for r in mine],
                                np.float32)
            signal.append(float(scores.std() > 0))
            groups.append(ScoredGroup(request.request_id, request, mine, scores))
        rewards.append(learner.grpo_step(groups)["reward_mean"])
        engine.load_weights(learner.export_weights(), learner.version)
    head, tail = rewards[:max(1, len(rewards) // 5)], rewards[-max(1, len(rewards) // 5):]
    return {"steps": len(rewards), "reward_first_fifth": float(np.mean(head)),
            "reward_last_fifth": float(np.mean(tail)), "groups_with_signal": float(np.mean(signal))}


def branch_learner(cfg: Config, start_dir: Path, lr: float, seed: int) -> PolicyLearner:
    """A learner at the SFT checkpoint with a constant learning rate (both branches get the same)."""
    learner_cfg = cfg.learner.model_copy(update={"lr": lr, "schedule": "constant", "warmup_steps": 0})
    return PolicyLearner(start_dir, cfg.policy, learner_cfg, cfg.grpo, seed)


def measure(cfg: Config, seeds: list[int], sft_steps: int, seconds: float, lr: float) -> list[dict]:
    rows = []
    for seed in seeds:
        split = split_data(cfg, seed)
        train, test, pixels = split.seeds, split.test, split.pixels
        learner = new_learner(cfg, seed)
        sft(learner, cfg, train, pixels, sft_steps, seed)
        after_sft = evaluate(learner, cfg, test, pixels)
        with tempfile.TemporaryDirectory() as tmp:
            start_dir = learner.save_pretrained(Path(tmp) / "sft")
            del learner
            rl = branch_learner(cfg, start_dir, lr, seed)
            t0 = time.perf_counter()
            stats = grpo(rl, cfg, train, pixels, seconds, seed)
            stats["seconds"] = time.perf_counter() - t0
            after_grpo = evaluate(rl, cfg, test, pixels)
            del rl
            ctl = branch_learner(cfg, start_dir, lr, seed)
            t0 = time.perf_counter()
            control_steps = sft(ctl, cfg, train, pixels, 10**9, seed + 1000, seconds=seconds)
            control_seconds = time.perf_counter() - t0
            after_control = evaluate(ctl, cfg, test, pixels)
        rows.append({"seed": seed, "after_sft": after_sft, "after_grpo": after_grpo, "grpo": stats,
                     "after_control": after_control, "control": {"steps": control_steps, "seconds": control_seconds}})
        print(f"seed {seed}: SFT {after_sft['accuracy']:.1%} -> GRPO {after_grpo['accuracy']:.1%} "
              f"({stats['steps']} steps, reward {stats['reward_first_fifth']:.2f}->{stats['reward_last_fifth']:.2f}, "
              f"signal {stats['groups_with_signal']:.0%}) vs SFT control {after_control['accuracy']:.1%} "
              f"({control_steps} steps)", flush=True)
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"# grpo_vs_sft\n\nSettings: {json.dumps(result['settings'])}; machine load at start "
             f"{result['machine'].get('loadavg_at_start', '?')}.\n",
             "| seed | after SFT | + GRPO (likelihood / greedy) | GRPO steps, reward first->last fifth, groups with signal "
             "| + equal-time SFT (likelihood / greedy) | control steps |", "|---|---|---|---|---|---|"]
    for r in rows:
        g = r["grpo"]
        lines.append(f"| {r['seed']} | {r['after_sft']['accuracy']:.1%} | {r['after_grpo']['accuracy']:.1%} / "
                     f"{r['after_grpo']['greedy_accuracy']:.1%} | {g['steps']}, {g['reward_first_fifth']:.2f}->"
                     f"{g['reward_last_fifth']:.2f}, {g['groups_with_signal']:.0%} | {r['after_control']['accuracy']:.1%} / "
                     f"{r['after_control']['greedy_accuracy']:.1%} | {r['control']['steps']} |")
    grpo_mean = np.mean([r["after_grpo"]["accuracy"] for r in rows])
    ctl_mean = np.mean([r["after_control"]["accuracy"] for r in rows])
    sft_mean = np.mean([r["after_sft"]["accuracy"] for r in rows])
    verdict = "GRPO adds over SFT" if grpo_mean > max(ctl_mean, sft_mean) else "GRPO does NOT add over SFT here"
    lines.append(f"\nMeans: after SFT {sft_mean:.1%}, + GRPO {grpo_mean:.1%}, + equal-time SFT {ctl_mean:.1%} -> "
                 f"{verdict}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sft-steps", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=90.0, help="wall-time budget of each branch")
    parser.add_argument("--lr", type=float, default=3e-4, help="constant learning rate of both branches")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["learner.schedule=cosine", f"learner.schedule_steps={args.sft_steps}",
                             "policy.tiny.image_size=112", *args.overrides])
    result = {"machine": machine(), "settings": dict(vars(args))}
    result["rows"] = measure(cfg, args.seeds, args.sft_steps, args.seconds, args.lr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grpo_vs_sft.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "grpo_vs_sft.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
