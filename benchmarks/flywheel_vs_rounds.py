"""The flywheel (continuous mode) against the paper's rounds, on the same budget, side by side in one run.

Both modes run the data side of the main job's config (`configs/cpu-tiny.yaml`: the same models, pool,
seeds, selection rule, actors and CPUs) without the solver. Each first bootstraps G and R on the seeds
(identical work in both modes, not timed), then has the same wall-clock budget: the rounds mode runs
whole rounds (generate -> score -> select over the round -> fine-tune G and refresh R, with barriers)
until the budget is spent; the continuous mode generates, scores, selects and trains G and R at once
for the budget, then drains what is in flight. Reported per mode, over repetitions run alternately (so
both see the same machine load on average):
- kept samples per second of the data phase (after the bootstrap);
- the kept samples' right-answer share: the share of kept modality questions whose stated answer names
  the image's true modality (the pool's metadata), with its spread over repetitions;
- candidates per second and the generator pool's busy share while G and R refresh (from the timeline).
Goal (issue 15): continuous >= 1.5x the rounds' kept samples per second at no lower right-answer share.

`--cycles N` adds the whole main job (`configs/cpu-tiny.yaml`, both modes, N times each, alternately):
its wall time and its held-out accuracy after the solver's SFT (and after GRPO), side by side; goal: the
continuous mode's accuracy after SFT no lower than the rounds mode's.

    .venv/bin/python benchmarks/flywheel_vs_rounds.py [--reps 3] [--budget 120] [--cycles 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline/one-thread environment before torch is imported)
import numpy as np  # noqa: E402
import proc_cpu  # noqa: E402

MODES = ("rounds", "continuous")


def one_run(mode: str, rep: int, budget_s: float, root: Path, cache: Path, quick: bool) -> dict[str, Any]:
    """One data phase of `mode`; its rates, right-answer share and overlap."""
    from medgr2_ray.config import load_config
    from medgr2_ray.eval.protocols import answer_agreement
    from medgr2_ray.eval.rundata import prepare_data
    from medgr2_ray.eval.timeline import (
        GENERATOR_REFRESH,
        REWARD_REFRESH,
        overlap,
        read_timeline,
    )
    from medgr2_ray.loop.cycle import run_data_only, with_absolute_paths

    extra = ["cycle.generator_bootstrap_steps=120", "cycle.rm_answer_steps=60"] if quick else []
    cfg = with_absolute_paths(load_config(common.REPO / "configs" / "cpu-tiny.yaml", [
        f"run.root={root}", f"run.name={mode}-{rep}", f"data.cache_dir={cache}", f"cycle.mode={mode}",
        "cycle.rounds=100", f"ray.namespace=bench-{mode}-{rep}", *extra]))
    with proc_cpu.MachineCPU() as cpu:
        run = run_data_only(cfg, lambda *_: None, budget_s=budget_s, prefix=f"{mode}{rep}-")
    busy = cpu.busy_share(run.data_started, run.data_started + run.data_seconds)
    pool = {i.image_id: i for i in prepare_data(cfg).pool.images}
    receipts = run.ledger.receipts
    spans = read_timeline(run.run_dir)
    return {
        "mode": mode, "rep": rep, "kept": len(run.kept), "data_s": run.data_seconds,
        "kept_per_s": len(run.kept) / run.data_seconds, "candidates": sum(r.candidates for r in receipts),
        "candidates_per_s": sum(r.candidates for r in receipts) / run.data_seconds,
        "right_share": answer_agreement(run.kept, pool),
        "generator_busy_during_refresh": overlap(spans, ("generate",), (GENERATOR_REFRESH, REWARD_REFRESH)),
        "cpu_busy": busy, "cores": os.cpu_count(),
        # core-seconds the whole machine spent per kept sample (the benchmark runs alone on it)
        "cpu_s_per_kept": busy * (os.cpu_count() or 1) * run.data_seconds / max(len(run.kept), 1),
    }


def one_cycle(mode: str, rep: int, root: Path, cache: Path) -> dict[str, Any]:
    """The whole main job in `mode` with `run.seed=rep` (its study split and draws): wall time and held-out
    accuracy at each point. Both modes run each seed, so the accuracies pair up seed by seed."""
    from medgr2_ray.config import load_config
    from medgr2_ray.loop.cycle import run_cycle

    cfg = load_config(common.REPO / "configs" / "cpu-tiny.yaml", [
        f"run.root={root}", f"run.name=cycle-{mode}-{rep}", f"data.cache_dir={cache}", f"cycle.mode={mode}",
        f"ray.namespace=cycle-{mode}-{rep}", f"run.seed={rep}"])
    result = run_cycle(cfg, lambda *_: None)
    out = {"mode": mode, "rep": rep, "seed": rep, "run_dir": str(result.run_dir), "seconds": result.seconds, "kept": result.kept,
           "stages": result.stage_seconds}
    out.update({f"acc_{k}": v.accuracy for k, v in result.evals.items()})
    return out


def cycles(args: argparse.Namespace, report: common.Report, root: Path, cache: Path) -> None:
    """The main job in both modes, alternately: wall time and accuracy side by side."""
    import ray

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for rep in range(args.cycles):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            ray.init(num_cpus=8, include_dashboard=False, namespace=f"cycle-{mode}-{rep}", log_to_driver=False)
            try:
                runs[mode].append(one_cycle(mode, rep, root, cache))
            finally:
                ray.shutdown()
            print(runs[mode][-1], flush=True)
    _cycle_tables(report, runs)


def _cycle_tables(report: common.Report, runs: dict[str, list[dict[str, Any]]]) -> None:
    rows = [[m, _stat([x["seconds"] for x in runs[m]]).fmt(), _stat([x["acc_untrained"] for x in runs[m]]).fmt(),
             _stat([x["acc_after_sft"] for x in runs[m]]).fmt(), _stat([x.get("acc_after_grpo") for x in runs[m]]).fmt(),
             _stat([x["kept"] for x in runs[m]]).fmt()] for m in MODES]
    report.table(f"The main job (configs/cpu-tiny.yaml), {len(runs['rounds'])} runs per mode (run.seed 0, 1, ...: "
                 "each seed's study split and draws in both modes), run alternately",
                 ["mode", "wall s", "untrained", "after SFT", "after GRPO", "kept"], rows)
    sft = {m: _stat([x["acc_after_sft"] for x in runs[m]]) for m in MODES}
    # Seed by seed (same split and draws in both modes): the paired differences, in points.
    pairs = [100 * (c["acc_after_sft"] - r["acc_after_sft"]) for c, r in zip(runs["continuous"], runs["rounds"])]
    report.goals.append(common.Goal("held-out accuracy after SFT, continuous vs rounds", "no lower",
                                    f"{sft['continuous'].fmt()} vs {sft['rounds'].fmt()}; per seed, continuous minus "
                                    f"rounds: {', '.join(f'{d:+.1f}' for d in pairs)} points (one question = 1.7)",
                                    sft["continuous"].median >= sft["rounds"].median))
    report.data["cycles"] = runs


def run(args: argparse.Namespace) -> None:
    import ray

    reps = 1 if args.quick else args.reps
    budget = 30.0 if args.quick else args.budget
    report = common.Report("flywheel_vs_rounds", args.quick, {"reps": reps, "budget_s": budget, "cycles": args.cycles,
                                                              "config": "configs/cpu-tiny.yaml"})
    cache = Path(args.cache or Path.home() / ".cache" / "medgr2_ray")
    root = Path(tempfile.mkdtemp(prefix="medgr2-flywheel-bench-"))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for rep in range(reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:  # alternate the order: load drifts
            ray.init(num_cpus=8, include_dashboard=False, namespace=f"bench-{mode}-{rep}", log_to_driver=False)
            try:
                runs[mode].append(one_run(mode, rep, budget, root, cache, args.quick))
            finally:
                ray.shutdown()
            print(runs[mode][-1], flush=True)
    _tables(report, runs, budget)
    if args.cycles and not args.quick:
        cycles(args, report, root, cache)
    report.save()


def _stat(values: list[float | None]) -> common.Stat:
    return common.summarize([v for v in values if v is not None] or [float("nan")])


def _tables(report: common.Report, runs: dict[str, list[dict[str, Any]]], budget: float) -> None:
    rows = []
    for mode in MODES:
        r = runs[mode]
        rows.append([mode, _stat([x["kept_per_s"] for x in r]).fmt(), _stat([x["right_share"] for x in r]).fmt(),
                     _stat([x["kept_per_s"] * x["right_share"] for x in r]).fmt(),
                     _stat([x["candidates_per_s"] for x in r]).fmt(),
                     _stat([x["kept"] / max(x["candidates"], 1) for x in r]).fmt(), _stat([x["kept"] for x in r]).fmt(),
                     _stat([x["data_s"] for x in r]).fmt(),
                     _stat([x["generator_busy_during_refresh"] for x in r]).fmt(),
                     _stat([x.get("cpu_busy") for x in r]).fmt(), _stat([x.get("cpu_s_per_kept") for x in r]).fmt()])
    report.table(f"Data phase after the bootstrap, {budget:.0f} s budget, main job's config",
                 ["mode", "kept/s", "kept right-answer share", "right kept/s", "candidates/s", "share kept", "kept",
                  "data phase s", "generator busy while G/R refresh", "cores busy (machine)", "core-s per kept"], rows)
    pairs = list(zip(runs["continuous"], runs["rounds"]))
    speed = _stat([c["kept_per_s"] / r["kept_per_s"] for c, r in pairs if r["kept_per_s"]])
    made = _stat([c["candidates_per_s"] / r["candidates_per_s"] for c, r in pairs if r["candidates_per_s"]])
    keep = {m: _stat([x["kept"] / max(x["candidates"], 1) for x in runs[m]]) for m in MODES}
    share = {m: _stat([x["right_share"] for x in runs[m]]) for m in MODES}
    # kept/s = candidates/s x share kept: the first is the system's, the second selection's (tau on R's score).
    why = (f"the flywheel makes {made.fmt()}x the rounds' candidates per second, but the same tau keeps "
           f"{keep['continuous'].median:.0%} of them against the rounds' {keep['rounds'].median:.0%}: R, refreshed "
           "continually on the kept stream, scores lower and more often right (the right-answer share)")
    busy = {m: _stat([x.get("cpu_busy") for x in runs[m]]) for m in MODES}
    cost = {m: _stat([x.get("cpu_s_per_kept") for x in runs[m]]) for m in MODES}
    per_candidate = {m: _stat([x["cpu_s_per_kept"] * x["kept"] / x["candidates"] for x in runs[m]
                               if x.get("cpu_s_per_kept") is not None and x["candidates"]]) for m in MODES}
    if np.isfinite(busy["rounds"].median):
        # kept/s = cores busy x cores / core-s per kept: overlap can only fill the cores the rounds leave idle.
        why += (f". On this machine the rounds already keep {busy['rounds'].median:.0%} of the cores busy (the "
                f"continuous mode {busy['continuous'].median:.0%}), so overlap alone can add at most "
                f"{1 / busy['rounds'].median:.2f}x; the rest would have to come from spending fewer core-seconds "
                f"per kept sample ({cost['continuous'].median:.2f} continuous vs {cost['rounds'].median:.2f} rounds), "
                "and every kept sample buys G and R the same steps in both modes. Per candidate the flywheel spends "
                f"{per_candidate['continuous'].median:.3f} core-s against the rounds' "
                f"{per_candidate['rounds'].median:.3f}: the system makes candidates more cheaply, selection keeps fewer")
    report.goals.append(common.Goal("continuous kept samples/s vs rounds", ">= 1.5x", speed.fmt(), speed.median >= 1.5,
                                    "" if speed.median >= 1.5 else why))
    report.goals.append(common.Goal("kept right-answer share, continuous vs rounds", "no lower",
                                    f"{share['continuous'].fmt()} vs {share['rounds'].fmt()}",
                                    share["continuous"].median >= share["rounds"].median))
    report.data["runs"] = runs
    report.data["ratio_kept_per_s"] = speed
    report.data["ratio_candidates_per_s"] = made


def render() -> None:
    """Rebuild the committed page from its JSON alone (the tables and goals as this script writes them)."""
    path = common.RESULTS / "flywheel_vs_rounds.json"
    saved = json.loads(path.read_text())
    report = common.Report("flywheel_vs_rounds", False, saved["settings"], machine=saved["machine"])
    _tables(report, saved["data"]["runs"], saved["settings"]["budget_s"])
    if saved["data"].get("cycles"):
        _cycle_tables(report, saved["data"]["cycles"])
    report.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of data phase after the bootstrap")
    parser.add_argument("--cache", default=None, help="seed pool and tiny models (default ~/.cache/medgr2_ray)")
    parser.add_argument("--cycles", type=int, default=2, help="whole main jobs per mode (0: none)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true", help="rewrite the page from the committed JSON")
    args = parser.parse_args()
    render() if args.render else run(args)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
