"""Write benchmarks/README.md, the results page, from the committed results (results/<name>.json) alone.

Nothing on the page is typed in by hand: each benchmark's section holds its current numbers as tables,
its goals (met or not, and what limits the number) and the command that reruns it; a table at the top
gives every goal at a glance. What a benchmark measures and what limits it are the `Bench` specs below;
the numbers, the verdicts and their reasons come from the JSON. Older results live in the git log, not on
the page. `tests/test_benchmarks_page.py` checks that the committed page is exactly what this writes.

    .venv/bin/python benchmarks/collect.py          # rewrite README.md
    .venv/bin/python benchmarks/collect.py --check  # exit 1 when README.md is not what it would write
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LEARNING_GOAL, Goal, learning_goal_met, sign_test  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PY = ".venv/bin/python benchmarks"
Rendered = tuple[list[str], list[Goal]]  # (Markdown blocks: tables and notes, goals)


@dataclass(frozen=True)
class Bench:
    """One benchmark on the page: its results file, what it measures, what limits it, how to rerun it."""

    name: str  # results/<name>.json
    title: str
    measures: str
    limits: str
    command: str
    render: Callable[[dict[str, Any]], Rendered]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def common_format(result: dict[str, Any]) -> Rendered:
    """Scripts built on common.py: their own tables (title + Markdown), goals and notes."""
    blocks = [f"**{t['title']}**\n\n{t['markdown']}" for t in result.get("tables", [])]
    blocks += [f"- {note}" for note in result.get("notes", [])]
    if (RESULTS / f"{result['name']}.png").is_file():
        blocks.append(f"![{result['name']}](results/{result['name']}.png)")
    return blocks, [Goal(**g) for g in result.get("goals", [])]


def _modalities(ev: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in ev["by_modality"].items())


def learns(result: dict[str, Any]) -> Rendered:
    """Untrained vs SFT on the template seeds, one study split per seed."""
    summary = result["learns"]
    rows = [[r["seed"], _pct(r["untrained"]["accuracy"]), _pct(r["sft"]["accuracy"]), _pct(r["sft"]["greedy_accuracy"]),
             _pct(r["sft"]["blind_bound"]), _modalities(r["sft"])] for r in summary["rows"]]
    table = _table(["split (= seed)", "untrained", "SFT (likelihood)", "SFT (greedy)", "image-blind bound",
                    "per modality after SFT"], rows)
    goal = Goal("the solver learns from template seeds", LEARNING_GOAL,
                f"mean {_pct(summary['mean'])}, min {_pct(summary['min'])}, "
                f"+{100 * summary['gain_over_untrained']:.1f} points", learning_goal_met(summary))
    return [f"{result['settings']['steps']} SFT steps.\n\n{table}"], [goal]


def _selection_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        top, rnd = (float(np.mean([r[k] for r in e["rows"]])) for k in ("top_k", "random_k"))
        rows.append([e["split"], e["candidates"], _pct(e["faithful_all"]), e["k"], _pct(e["faithful_top_k"]),
                     f"{e['auroc']:.3f}", _pct(top), _pct(rnd), f"{sum(r['top_k'] > r['random_k'] for r in e['rows'])} of "
                     f"{len(e['rows'])}", _pct(e["untrained"]), _pct(e["blind_bound"])])
    return _table(["split", "candidates", "right answers in all", "K kept", "right answers in top-K", "R's AUROC",
                   "SFT on top-K (mean over seeds)", "SFT on random K", "seeds top-K > random", "untrained",
                   "image-blind bound"], rows)


def _selection_goal(entries: list[dict[str, Any]], beside: str) -> Goal:
    pairs = [r for e in entries for r in e["rows"]]
    diffs = np.array([r["top_k"] - r["random_k"] for r in pairs])
    splits = sum(np.mean([r["top_k"] for r in e["rows"]]) > np.mean([r["random_k"] for r in e["rows"]]) for e in entries)
    p = sign_test(int((diffs > 0).sum()), int((diffs < 0).sum()))
    se = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return Goal(f"SFT on R's top-K beats SFT on a random K of the same candidates{beside}",
                "on every study split (mean over training seeds)",
                f"{splits} of {len(entries)} splits, {int((diffs > 0).sum())} of {len(pairs)} pairs, paired "
                f"{100 * diffs.mean():+.1f} points (SE {100 * se:.1f}, sign test p = {p:.3f})",
                splits == len(entries))


def selection_alone(result: dict[str, Any]) -> Rendered:
    """The cycle's selection vs a random subset of the same candidates, each trained on alone."""
    entries = result["selection"]
    return ([f"{result['settings']['steps']} SFT steps, training seeds {result['settings']['seeds']} on each "
             f"split's run.\n\n{_selection_table(entries)}"], [_selection_goal(entries, "")])


def _seeds_alone(split: int) -> float | None:
    """The seeds alone at 800 steps on a split (learns_on_cpu_learns_800), training seed = split."""
    path = RESULTS / "learns_on_cpu_learns_800.json"
    rows = json.loads(path.read_text())["learns"]["rows"] if path.is_file() else []
    return next((r["sft"]["accuracy"] for r in rows if r["seed"] == split), None)


def selection_with_seeds(result: dict[str, Any]) -> Rendered:
    """The same subsets, each beside the template seeds (as the cycle's solver trains), and the seeds alone."""
    entries = result["selection"]
    same = [[e["split"], _pct(_seeds_alone(e["split"])),
             _pct(next(r["top_k"] for r in e["rows"] if r["seed"] == e["split"])),
             _pct(next(r["random_k"] for r in e["rows"] if r["seed"] == e["split"]))] for e in entries]
    alone = [_seeds_alone(e["split"]) for e in entries]
    tops = [next(r["top_k"] for r in e["rows"] if r["seed"] == e["split"]) for e in entries]
    beats = sum(a is not None and t > a for a, t in zip(alone, tops))
    blocks = [f"{result['settings']['steps']} SFT steps, each subset beside the split's ~700 template seeds.\n\n"
              f"{_selection_table(entries)}",
              "Against the seeds alone at the same 800 steps (`learns_on_cpu_learns_800.json`; training seed = "
              f"split):\n\n{_table(['split', 'seeds alone', 'seeds + top-K', 'seeds + random K'], same)}"]
    return blocks, [_selection_goal(entries, ", beside the seeds"),
                    Goal("seeds + top-K beats the seeds alone", "on every split", f"{beats} of {len(entries)} splits",
                         beats == len(entries))]


def solver(result: dict[str, Any]) -> Rendered:
    """The MedGR² solver: the seeds beside one selection run's top-K, vs the seeds alone and + random K."""
    s = result["solver"]
    rows = [[r["seed"], f"{r['candidates']} ({_pct(r['faithful_all'])})", f"{r['k']} ({_pct(r['faithful_top_k'])})",
             _pct(r["untrained"]["accuracy"]), _pct(r["seeds_only"]["accuracy"]), _pct(r["seeds_random_k"]["accuracy"]),
             _pct(r["seeds_top_k"]["accuracy"]), _pct(r["seeds_top_k"]["blind_bound"])] for r in s["rows"]]
    table = _table(["split", "candidates (right answers)", "K (right in top-K)", "untrained", "seeds only",
                    "seeds + random K", "seeds + top-K", "image-blind bound"], rows)
    better = sum(r["seeds_top_k"]["accuracy"] > r["seeds_random_k"]["accuracy"] for r in s["rows"])
    return [f"{result['settings']['steps']} SFT steps, one training seed per arm.\n\n{table}"], [
        Goal("the MedGR² solver (seeds + top-K) learns", LEARNING_GOAL,
             f"mean {_pct(s['mean'])}, min {_pct(s['min'])}, +{100 * s['gain_over_untrained']:.1f} points",
             learning_goal_met(s)),
        Goal("seeds + top-K beats seeds + random K", "on every split", f"{better} of {len(s['rows'])} splits",
             better == len(s["rows"]))]


def grpo_vs_sft(result: dict[str, Any]) -> Rendered:
    """GRPO after SFT against an equal-time SFT control from the same checkpoint."""
    rows = [[r["seed"], _pct(r["after_sft"]["accuracy"]), _pct(r["after_grpo"]["accuracy"]),
             _pct(r["after_grpo"]["greedy_accuracy"]), r["grpo"]["steps"],
             f"{r['grpo']['reward_first_fifth']:.2f} -> {r['grpo']['reward_last_fifth']:.2f}",
             _pct(r["after_control"]["accuracy"]), r["control"]["steps"]] for r in result["rows"]]
    table = _table(["split (= seed)", "after SFT", "+ GRPO", "+ GRPO (greedy)", "GRPO steps",
                    "GRPO train reward, first -> last fifth", "+ equal-time SFT", "SFT control steps"], rows)
    means = {k: float(np.mean([r[k]["accuracy"] for r in result["rows"]])) for k in ("after_sft", "after_grpo",
                                                                                       "after_control")}
    settings = result["settings"]
    return [f"{settings['sft_steps']} SFT steps, then {settings['seconds']:.0f} s of each arm at lr {settings['lr']}."
            f"\n\n{table}"], [
        Goal("GRPO adds held-out accuracy over SFT", "+ GRPO above both after-SFT and + equal-time SFT (means)",
             f"after SFT {_pct(means['after_sft'])}, + GRPO {_pct(means['after_grpo'])}, + equal-time SFT "
             f"{_pct(means['after_control'])}", means["after_grpo"] > max(means["after_sft"], means["after_control"]))]


def main_job(result: dict[str, Any]) -> Rendered:
    """Wall time and memory of the main job, summed over every process of the run."""
    driver_kib = result.get("gnu_time", {}).get("Maximum resident set size (kbytes)")
    row = [" ".join(result["command"]), f"{result['wall_s'] / 60:.1f} min", f"{result['peak_tree_rss_gib']:.2f} GiB",
           f"{int(driver_kib) / 2**20:.2f} GiB" if driver_kib else "n/a", result["exit_status"]]
    table = _table(["command", "wall time", "peak RSS, whole process tree", "peak RSS, driver alone", "exit status"],
                   [row])
    return [table], [Goal("the main job fits a small machine", "under 10 minutes on 2 cores",
                          f"{result['wall_s'] / 60:.1f} min, {result['peak_tree_rss_gib']:.2f} GiB",
                          result["wall_s"] < 600 and result["exit_status"] == 0)]


BENCHES = (
    Bench("main_job_resources", "The main job: time and memory",
          "`medgr2 run configs/cpu-tiny.yaml` from a fresh clone with the seed pool and tiny models cached: wall "
          "time, and peak resident memory summed over the driver, Ray's daemons and every actor",
          "the two shared cores (the stages run one after another); RSS counts shared pages once per process, so "
          "the tree's peak is an upper bound",
          f"{PY}/main_job_resources.py -- .venv/bin/medgr2 run configs/cpu-tiny.yaml", main_job),
    Bench("learns_on_cpu_learns", "The solver learns on CPU",
          "held-out accuracy of the tiny solver trained from scratch by SFT on template seeds, one study split per "
          "seed, on 60 modality-balanced questions from held-out studies (length-normalised option likelihood; "
          "greedy exact match and the exact image-blind bound beside it)",
          "the seed pool (29 studies at v3): X-ray has three very different studies, so each split tests X-ray on "
          "a study unlike its training ones (the X-Ray column); 60 questions per split, one question is 1.7 points",
          f"{PY}/learns_on_cpu.py --steps 1200 --only learns --jobs 3 --out learns_on_cpu_learns", learns),
    Bench("learns_on_cpu_learns_800", "The solver learns on CPU, at the main job's 800 SFT steps",
          "the same measurement at 800 steps: the seeds-alone baseline of the selection measurements below",
          "as above", f"{PY}/learns_on_cpu.py --steps 800 --only learns --jobs 3 --out learns_on_cpu_learns_800", learns),
    Bench("learns_on_cpu_selection_splits", "Selection alone: R's top-K vs a random K",
          "per study split, one run over all the split's training images (4 samples per prompt) writes candidates; "
          "the cycle's rule (tau 2, balanced, top-K 160) keeps some; from one init and seed, SFT on the kept "
          "samples vs on a random subset of the same size (3 training seeds per split)",
          "generated questions are about training studies, so neither subset teaches held-out recognition much "
          "(both stay near the image-blind bound); the kept sets are uneven across modalities",
          "IMAGES_PER_ROUND=400 SAMPLES_PER_PROMPT=4 TOP_K=160 NAME=selbig bash scripts/selection_runs.sh 0 1 2\n"
          f"{PY}/learns_on_cpu.py --steps 600 --jobs 3 --only selection --runs runs/selbig-s0 runs/selbig-s1 "
          "runs/selbig-s2 --out learns_on_cpu_selection_splits", selection_alone),
    Bench("learns_on_cpu_selection_splits_with_seeds", "Selection beside the template seeds",
          "the same runs and kept sets, each subset added to the split's template seeds as the cycle's solver "
          "trains (800 SFT steps), against the seeds alone",
          "the kept samples are not all right (the 'right answers in top-K' column) where the template seeds all "
          "are, and they are about the same training studies, so beside the seeds they cost a little instead of "
          "adding",
          "(the selbig runs above, then)\n"
          f"{PY}/learns_on_cpu.py --steps 800 --jobs 2 --only selection --with-seeds --runs runs/selbig-s0 "
          "runs/selbig-s1 runs/selbig-s2 --out learns_on_cpu_selection_splits_with_seeds", selection_with_seeds),
    Bench("learns_on_cpu_solver", "The MedGR² solver: seeds + the cycle's selection",
          "per study split a one-round run made with that split's seed; SFT on the seeds alone, the seeds + that "
          "run's top-K, and the seeds + a random K of the same candidates (1200 steps, one training seed per arm)",
          "one training seed per arm: any change to the training set reshuffles every later batch, which at 60 "
          "test questions moves a run by 10-25 points, more than the data effect; K is a few dozen samples",
          "bash scripts/selection_runs.sh 0 1 2\n"
          f"{PY}/learns_on_cpu.py --steps 1200 --jobs 3 --only solver --runs runs/selection-s0 runs/selection-s1 "
          "runs/selection-s2", solver),
    Bench("learns_on_cpu_solver_flywheel", "The MedGR² solver on the flywheel's kept stream",
          "per study split a continuous main job made with that split's seed (the flywheel's kept stream is its "
          "selection); SFT on the seeds alone, the seeds + what the stream kept, and the seeds + a random set of "
          "the same size from the same candidates (1200 steps, one training seed per arm)",
          "one training seed per arm, as above; the kept stream is about training studies, and the held-out "
          "questions are about studies no model saw",
          "for K in 0 1 2; do .venv/bin/medgr2 run configs/cpu-tiny.yaml --set run.seed=$K --set "
          "run.name=flywheel-s$K; done\n"
          f"{PY}/learns_on_cpu.py --steps 1200 --jobs 3 --only solver --runs runs/flywheel-s0 runs/flywheel-s1 "
          "runs/flywheel-s2 --out learns_on_cpu_solver_flywheel", solver),
    Bench("grpo_vs_sft", "GRPO after SFT vs equal-time SFT",
          "from the same checkpoint after 1200 SFT steps, 90 s of GRPO against 90 s more SFT (same lr, same seeds): "
          "held-out accuracy, GRPO steps and training reward",
          "held-out accuracy is limited by recognising a study never seen; GRPO's reward is on training images, "
          "which SFT has largely solved already (the training-reward column starts high)",
          f"{PY}/grpo_vs_sft.py --seconds 90", grpo_vs_sft),
    Bench("flywheel_vs_rounds", "The flywheel against the paper's rounds",
          "the main job's data side in both modes on the same budget after the same G and R bootstrap: kept "
          "samples per second and the kept samples' right-answer share (against the images' modality); then the "
          "whole main job in both modes, alternately: wall time and held-out accuracy after SFT",
          "two cores shared by every actor: the continuous mode's gain is the time the rounds leave a core idle "
          "(generation waits for G's and R's training and the other way round); selection keeps few samples at "
          "this model size, and one held-out question is 1.7 points",
          f"{PY}/flywheel_vs_rounds.py --reps 3 --budget 90 --cycles 3", common_format),
    Bench("weight_sync", "Weight sync through the object store",
          "the learner packs straight from its parameters into the publish buffer (`ray.put`), an engine in another "
          "actor serves the published buffers as read-only views (`HFEngine.load_weights`), for 10M-500M-parameter "
          "models, full and LoRA-only (unmerged adapters), against `np.copyto` of the same bytes",
          "one copy per update (the put), so 1.0 of memcpy is the ceiling; a cold object store's first puts "
          "fault in fresh pages and run far slower", f"{PY}/weight_sync.py   # ~10 min, ~8 GB RAM at the 500M size", common_format),
    Bench("async_vs_sync", "Asynchronous vs synchronous GRPO loop",
          "the Ray loop on one GRPO job with max_staleness 0 and 1: samples/s, the stage times that bound the "
          "possible overlap, what this machine gives the two sides run at once in two plain processes (no Ray: the "
          "ceiling for any orchestrator here), and CPU per step of every process",
          "overlap needs the rollout actor and the learner to each get a core; the two cores are shared with "
          "Ray's own processes, and two busy processes slow each other down. Overlap hides waiting, not CPU: the "
          "CPU that every other process of the cluster spends per step bounds the async step from below, and on "
          "2 cores that bound is over 5% above the ideal step (the goal's line computes it from the CPU table)",
          f"{PY}/async_vs_sync.py --reps 2 --variants ahead,next", common_format),
    Bench("orchestration_overhead", "Orchestration overhead of the Ray loop",
          "seconds per GRPO step of the synchronous Ray loop as it runs by default (calls chained on refs, the "
          "learner's step queued ahead, the next step's generate waiting on the learner step's result at the "
          "feed; `--variants driver,ahead,next` adds the earlier ways of submitting calls) against the same job "
          "in one plain process, the two taking turns every 4 steps; where "
          "each step's time goes, hop by hop, and CPU per step of every process; the same for the data lane",
          "actor calls and object-store hand-overs per step, each of which can wait for a time slice on shared "
          "cores beside Ray's own processes; the noise is of the same order as the overhead",
          f"{PY}/orchestration_overhead.py --reps 5 --variants next",
          common_format),
    Bench("orchestration_overhead_128tok", "Orchestration overhead of the Ray loop with 128-token completions (~0.9 s steps)",
          "the same GRPO measurement with 128-token completions, the long end of the goal's ~0.5-1 s steps (the "
          "page above is the short end): the hops cost about the same milliseconds, so their share falls as the step grows",
          "as above", f"{PY}/orchestration_overhead.py --tokens 128 --parts grpo --reps 5 --variants next",
          common_format),
    Bench("vs_trl", "Against TRL's GRPOTrainer",
          "TRL 1.16 `GRPOTrainer` vs ours as a user runs it (the asynchronous Ray loop, max_staleness 1) and the "
          "in-process synchronous loop of the same parts, on the identical tiny VLM, prompts, reward, group size, "
          "lengths, steps, optimizer and loss (and glibc malloc settings: ours' workers' thresholds in TRL's process too)",
          "both run the same transformers kernels on one thread; the toy reward collapses onto plateaus that "
          "differ by seed", f"pip install -e '.[bench]'\n{PY}/vs_trl.py --seeds 3", common_format),
    Bench("engine_throughput", "Rollout engine throughput",
          "`HFEngine.generate` completion tokens/s for batch 1-64 on a 0.4M and a 27M tiny VLM, beside "
          "`transformers` `model.generate` on the same inputs (vLLM where a GPU is present)",
          "CPU, one thread, shared cores; the tiny model is Python-overhead bound, the 27M one matmul bound",
          f"{PY}/engine_throughput.py", common_format),
)

INTRO = """# Benchmarks: current results

This page is written by `benchmarks/collect.py` from the committed results in `benchmarks/results/*.json`
(do not edit it by hand; a test checks that it is exactly what `collect.py` writes). Older results are in
the git log. None of this is a test: `tests/` has no timing thresholds.

How the numbers are taken: each script measures what it compares side by side in one run, interleaving
repetitions, and reports the median with the min-max range (`median [min-max]`); the machine is shared,
so only numbers taken together mean something. Every result records its machine (CPU, cores, RAM, GPU,
versions, git commit, and the load average at start). `--quick` gives a smoke run (written to
`results/quick/`, not committed); `--cache DIR` shares built models between scripts. Learning
measurements use 60 held-out questions per study split, so one question is 1.7 points."""


def _measured_on(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    load = m.get("loadavg_at_start")
    load_text = f", load average at start {load[0]:.2f}" if isinstance(load, list) and load else ""
    return (f"Measured {m.get('date_utc', '?')[:10]} at commit {m.get('git_commit', '?')} on {m.get('cpu', '?')}, "
            f"{m.get('cores', '?')} cores, {m.get('gpu') or 'no GPU'}{load_text}.")


def _goal_rows(bench: Bench, goals: list[Goal]) -> list[list[str]]:
    return [[f"[{bench.title}](#{bench.name.replace('_', '-')})", g.name, g.target, g.measured,
             "met" if g.met else "**not met**"] for g in goals]


def section(bench: Bench, result: dict[str, Any], goals: list[Goal], blocks: list[str]) -> str:
    """One benchmark: what it measures, its tables, its goals with what limits them, the rerun command."""
    goal_lines = [g.line() for g in goals]
    parts = [f'<a id="{bench.name.replace("_", "-")}"></a>\n\n## {bench.title}', f"What it measures: {bench.measures}.",
             _measured_on(result), *blocks, "Goals:\n\n" + "\n".join(goal_lines),
             f"What limits it: {bench.limits}.", f"Rerun (`results/{bench.name}.json`):\n\n```bash\n{bench.command}\n```"]
    return "\n\n".join(parts)


def render() -> str:
    """The whole page."""
    glance: list[list[str]] = []
    sections: list[str] = []
    for bench in BENCHES:
        path = RESULTS / f"{bench.name}.json"
        if not path.is_file():
            sections.append(f"## {bench.title}\n\nNot measured yet. Run:\n\n```bash\n{bench.command}\n```")
            continue
        result = json.loads(path.read_text())
        blocks, goals = bench.render(result)
        glance += _goal_rows(bench, goals)
        sections.append(section(bench, result, goals, blocks))
    table = _table(["benchmark", "goal", "target", "measured", "verdict"], glance)
    return f"{INTRO}\n\n## At a glance\n\n{table}\n\n" + "\n\n".join(sections) + "\n"


def main() -> int:
    page, readme = render(), HERE / "README.md"
    if "--check" in sys.argv[1:]:
        same = readme.is_file() and readme.read_text() == page
        print(f"{readme} is {'up to date' if same else 'out of date: run benchmarks/collect.py'}")
        return 0 if same else 1
    readme.write_text(page)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
