"""Orchestration overhead of the Ray loop: per-step time of the synchronous loop (`max_staleness = 0`:
nothing overlaps, so every second above the work itself is orchestration) against the same steps in one
plain Python process without Ray (`grpo_job.run_plain`: generate -> score -> train -> export -> load),
and where the difference goes, call by call. The hops cost about the same milliseconds whatever the step
does, so their share depends on the step's length: the default completion length (64 tokens) gives
~0.5 s steps here, the short end of the ~0.5-1 s the goal names, and `--tokens 128` (~0.9 s steps, its own
page: `orchestration_overhead_128tok`, GRPO part only) the long end.

The loop runs in several variants, side by side in one run, each adding one way of cutting hops:
- `driver`: every call goes through the driver (generate, then score, then put, then take + learner
  step once the driver saw the put; the learner's item queued with a blocking round trip to its feed,
  as the loop did before these changes);
- `feed`: the learner's item queued without waiting for the feed's answer (one call: item + result);
- `chain`: + generate -> score -> put submitted together, each on the previous one's result ref
  (`loop.chain_calls`);
- `ahead`: + the learner's next step queued as soon as it is free, its take run by Ray right after the
  puts that bring its groups (`loop.take_ahead`);
- `next`: + the next step's generate calls submitted as a step is queued, each on the step's result ref,
  so generation starts with the new weights as the step publishes (`loop.generate_ahead`): the loop as
  it runs by default.

For each variant, the per-call table (`hops.py`) cuts every timed step into the calls and hand-overs it
is made of (actor calls, object-store hand-overs, the feed's round trip, the driver's own time), from
what the controller and the actors recorded; medians over the steps of all repetitions. In every
repetition the loop and the one-process job take turns in blocks of `--block` steps
(`grpo_job.run_interleaved`): this machine's speed drifts by more than the overhead within minutes, so
each is compared with steps taken seconds apart, never with a run a minute before. A variant's overhead
is computed per repetition: its mean step against the mean one-process step of the same repetition
(each turn's first step left out on both sides: the loop's starts from an idle loop).

The data flywheel gets the matching measurement (`--parts data`, `data_job.py`): one call of the data
lane (generate -> parse + score -> the kept-sample store's decision) on real actors, calls run one at a
time, against the same calls in one process, with the lane's calls every one through the driver
(`driver`) or generate -> score chained (`chain`), and the same per-call cut (`hops.DATA_HOPS`).

What a hand-over costs here at all (`wake.py`, after the GRPO part): a one-way actor call by how long its
receiver had waited, and the messages a synchronous step passes through in a row; at those latencies they
give a lower estimate of what the messages alone cost per step, which only fewer messages in a row lower.

Ray Compiled Graphs (`--parts graph`): what a fixed pipeline of three actor calls costs per pass with
plain actor calls (each result back to the driver, or chained on refs) and as a compiled graph, with
trivial work: the most a compiled graph could save per hop of the loop.

    .venv/bin/python benchmarks/orchestration_overhead.py [--quick] [--variants driver,ahead] [--parts grpo,data,graph]
    .venv/bin/python benchmarks/orchestration_overhead.py --tokens 128 --parts grpo --variants next
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline/one-thread environment before torch is imported)

import data_job  # noqa: E402
import grpo_job  # noqa: E402
import hops  # noqa: E402
import proc_cpu  # noqa: E402
import wake  # noqa: E402
from medgr2_ray.config import ModelConfig  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402

VARIANTS, blocking_feed = grpo_job.VARIANTS, grpo_job.blocking_feed
DEFAULT = "next"  # the loop as it runs by default
GOAL_PCT = 3.0
TOKENS = 64  # the default completion length; any other length writes its own page (page_name)

DATA_VARIANTS: dict[str, dict[str, Any]] = {"driver": {"chain_calls": False}, "chain": {"chain_calls": True}}


def run(args: argparse.Namespace) -> None:
    import ray

    common.single_thread()
    variants = [v for v in args.variants.split(",") if v]
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(variants) - set(VARIANTS)) + sorted(set(parts) - {"grpo", "data", "graph"})
    if unknown:
        raise SystemExit(f"unknown {unknown}: --variants takes {sorted(VARIANTS)}, --parts grpo, data and graph")
    reps = 1 if args.quick else args.reps
    report = common.Report(page_name(args.tokens), args.quick, {"reps": reps, "variants": variants, "parts": parts})
    grpo_job.ray_init()
    try:
        if "grpo" in parts:
            run_grpo(args, report, variants, reps)
        if "data" in parts:
            run_data(args, report, reps)
        if "graph" in parts:
            run_graph(report, 50 if args.quick else 500)
    finally:
        blocking_feed(False)
        ray.shutdown()
    report.save()


def page_name(tokens: int) -> str:
    """The results page of a completion length: the default one's, or `orchestration_overhead_<N>tok`."""
    return "orchestration_overhead" if tokens == TOKENS else f"orchestration_overhead_{tokens}tok"


def run_grpo(args: argparse.Namespace, report: common.Report, variants: list[str], reps: int) -> None:
    """The GRPO loop in every variant beside one process; its tables, plot and goal."""
    shape = grpo_job.JobShape(prompts_per_step=4, group_size=8, max_new_tokens=args.tokens,
                              steps=4 if args.quick else 16, warmup_steps=1 if args.quick else 4,
                              settle_s=0.0 if args.quick else args.settle)
    report.settings["shape"] = shape.__dict__
    cache = Path(args.cache or tempfile.mkdtemp(prefix="medgr2-bench-"))
    policy_dir = ensure_model_dir(ModelConfig(), cache, seed=0, role="policy")
    plains: dict[str, list[grpo_job.PlainRun]] = {v: [] for v in variants}
    loops: dict[str, list[grpo_job.LoopRun]] = {v: [] for v in variants}
    report.settings["block"] = args.block
    for rep in range(reps):
        for name in variants if rep % 2 == 0 else variants[::-1]:
            loop, plain = grpo_job.run_interleaved(shape, policy_dir, rep, name, args.block)
            loops[name].append(loop)
            plains[name].append(plain)
            print(f"rep {rep}: {name} {loop.step_s:.3f} s/step, one process {_step_s(plain):.3f} s/step", flush=True)
    idle = proc_cpu.idle_actor_cpu()
    report.data["wake_ms"] = wake.one_way_ms()
    tables(report, shape, plains, loops, idle)
    plot(report, plains, loops)


def run_data(args: argparse.Namespace, report: common.Report, reps: int) -> None:
    """The data lane's calls, one at a time, beside the same calls in one process; its tables."""
    common.suppress_vision_tokens()  # as the actors do (the Ray workers' set-up hook)
    shape = data_job.DataShape(calls=3 if args.quick else 12, warmup_calls=1 if args.quick else 2,
                               g_steps=args.g_steps, settle_s=0.0 if args.quick else args.settle)
    report.settings["data_shape"] = shape.__dict__
    root = Path(tempfile.mkdtemp(prefix="medgr2-data-bench-"))
    setting = data_job.setting(shape, root, Path(args.data_cache).expanduser())
    paired: dict[str, list[data_job.DataRun]] = {v: [] for v in DATA_VARIANTS}
    lanes: dict[str, list[data_job.DataRun]] = {v: [] for v in DATA_VARIANTS}
    for rep in range(reps):
        for name in DATA_VARIANTS if rep % 2 == 0 else list(DATA_VARIANTS)[::-1]:
            paired[name].append(data_job.run_plain(setting, root / f"plain-{name}-{rep}"))
            lanes[name].append(data_job.run_lane(setting, root / f"{name}-{rep}", DATA_VARIANTS[name]))
            print(f"rep {rep}: data lane, {name} {lanes[name][-1].mean_call_s:.3f} s/call, one process "
                  f"{paired[name][-1].mean_call_s:.3f} s/call", flush=True)
    data_tables(report, shape, paired, lanes)


def run_graph(report: common.Report, passes: int) -> None:
    """Three actors in a row (trivial work, a 1000-int message): per pass through them, driver round trips,
    calls chained on refs, and a Ray Compiled Graph of the same three calls."""
    import time

    import ray
    from ray.dag import InputNode

    @ray.remote(num_cpus=0)
    class Stage:
        def f(self, x: Any) -> Any:
            return x

    a, b, c = (Stage.remote() for _ in range(3))
    message = list(range(1000))
    ways = {"driver round trips": lambda: ray.get(c.f.remote(ray.get(b.f.remote(ray.get(a.f.remote(message)))))),
            "calls chained on refs": lambda: ray.get(c.f.remote(b.f.remote(a.f.remote(message))))}
    with InputNode() as inp:
        graph = c.f.bind(b.f.bind(a.f.bind(inp))).experimental_compile()
    ways["compiled graph"] = lambda: ray.get(graph.execute(message))
    ms: dict[str, list[float]] = {}
    try:
        for name, way in ways.items():
            for _ in range(passes // 10):  # warm-up
                way()
            ms[name] = []
            for _ in range(passes):
                start = time.perf_counter()
                way()
                ms[name].append(1000 * (time.perf_counter() - start))
    finally:
        graph.teardown()
        for actor in (a, b, c):
            ray.kill(actor)
    report.table(f"Ray Compiled Graphs: ms per pass through three actors (trivial work; {passes} passes)",
                 ["way", "ms per pass", "ms per hop"],
                 [[k, common.summarize(v).fmt(), f"{common.summarize(v).median / 3:.2f}"] for k, v in ms.items()])
    report.data["graph_ms"] = ms


def data_tables(report: common.Report, shape: data_job.DataShape, paired: dict[str, list[data_job.DataRun]],
                lanes: dict[str, list[data_job.DataRun]]) -> None:
    """Seconds per call and overhead per variant (each run against the one-process run just before it); the cut."""
    plains = [p for runs in paired.values() for p in runs]
    plain_call = [p.mean_call_s for p in plains]
    overhead = {v: common.summarize([100 * (r.mean_call_s / p.mean_call_s - 1) for r, p in zip(runs, paired[v])])
                for v, runs in lanes.items()}
    per_call = lambda runs, attr: common.summarize([getattr(r, attr) / len(r.call_s) for r in runs]).fmt()  # noqa: E731
    report.table(f"Data flywheel: seconds per call ({shape.requests_per_call} prompts x {shape.samples_per_prompt} "
                 f"samples of <= {shape.max_new_tokens} tokens, generate -> parse + score -> select, one call at a time, "
                 f"{shape.calls} timed calls per run; overhead vs the one-process run just before)",
                 ["data side", "s/call", "overhead %", "candidates/call", "kept/call"],
                 [["one process (no Ray)", common.summarize(plain_call).fmt(), "", per_call(plains, "candidates"),
                   per_call(plains, "kept")]]
                 + [[f"data lane, {v}", common.summarize([r.mean_call_s for r in runs]).fmt(), overhead[v].fmt(),
                     per_call(runs, "candidates"), per_call(runs, "kept")] for v, runs in lanes.items()])
    cut = {v: [h for r in runs for h in hops.data_call_hops(r.trace.calls, r.trace.spans)] for v, runs in lanes.items()}
    med = {v: hops.data_median_ms(steps) for v, steps in cut.items()}
    plain_ms = {"generate": _median([x for p in plains for x in p.generate_s]),
                "parse + score": _median([x for p in plains for x in p.score_s]),
                "offer": _median([x for p in plains for x in p.offer_s]),
                "call": _median([x for p in plains for x in p.call_s])}
    rows = [[name, "work" if name in hops.DATA_WORK else "orchestration", f"{1000 * plain_ms.get(name, 0.0):.1f}",
             *(f"{med[v].get(name, float('nan')):.1f}" for v in lanes)] for name in (*hops.DATA_NAMES, "call")]
    rows.append(["calls cut", "", str(sum(len(p.call_s) for p in plains)), *(str(len(cut[v])) for v in lanes)])
    report.table("Data flywheel: where a call's time goes, median ms per call (hops.py; `offer` on the lane is the "
                 "store's decision and its round trip)", ["hop", "kind", "one process", *lanes], rows)
    report.table("What each data hop is", ["hop", "from -> to"], [list(h) for h in hops.DATA_HOPS])
    report.data["data"] = {"plain_call_s": plain_call, "lane_call_s": {v: [r.mean_call_s for r in runs]
                                                                        for v, runs in lanes.items()},
                           "overhead_pct": overhead, "hops_ms": med}
    data_goal(report, overhead["chain"], med["chain"])


def data_goal(report: common.Report, overhead: common.Stat, hops_ms: dict[str, float]) -> None:
    """The data lane's goal: the paired per-call ratio and the orchestration hops' share of a call (the
    store's `offer` counts as work: it is the selection itself)."""
    spent = sum(v for k, v in hops_ms.items() if k not in hops.DATA_WORK and k != "call")
    share = 100 * spent / hops_ms["call"]
    met = overhead.median <= GOAL_PCT and share <= GOAL_PCT
    report.goals.append(common.Goal(
        f"data lane per-call time within {GOAL_PCT:g}% of one process (calls one at a time)",
        f"<= {GOAL_PCT:g}% extra, paired and by the hops",
        f"{overhead.fmt()}% paired; orchestration hops {spent:.1f} of {hops_ms['call']:.0f} ms per call ({share:.1f}%)",
        met, "" if met else f"per-repetition overheads {[round(v, 1) for v in overhead.values]}%; the cut above "
        "shows where it goes"))


# hop -> the one-process stage it matches (the same work)
PLAIN_STAGE = {"load weights": "load_s", "generate": "generate_s", "score": "score_s", "train": "train_s",
               "publish": "export_s"}


def _step_s(run: grpo_job.PlainRun) -> float:
    return run.wall_s / len(run.step_s)


def tables(report: common.Report, shape: grpo_job.JobShape, paired: dict[str, list[grpo_job.PlainRun]],
           loops: dict[str, list[grpo_job.LoopRun]], idle_ms_per_s: list[float]) -> None:
    """Seconds per step and overhead per variant (each run against the one-process steps of its repetition);
    the per-call table; what an idle actor costs; the goal."""
    plains = [p for runs in paired.values() for p in runs]
    overhead = {v: common.summarize([100 * (r.step_s / _step_s(p) - 1) for r, p in zip(runs, paired[v])])
                for v, runs in loops.items()}
    report.table(f"Seconds per GRPO step ({shape.prompts_per_step} prompts x {shape.group_size} completions of "
                 f"{shape.max_new_tokens} tokens, {shape.steps} timed steps per run of each, in turns of "
                 f"{report.settings.get('block', '?')} steps, each turn's first step left out), overhead vs the "
                 "one-process steps of the same repetition", ["loop", "s/step", "one process, paired", "overhead %"],
                 [[f"Ray loop, {v}", common.summarize([r.step_s for r in runs]).fmt(),
                   common.summarize([_step_s(p) for p in paired[v]]).fmt(), overhead[v].fmt()]
                  for v, runs in loops.items()])
    cut = {v: [h for r in runs for h in hops.trace_hops(r.trace)] for v, runs in loops.items()}
    med = {v: hops.median_ms(steps) for v, steps in cut.items()}
    plain_ms = {name: 1000 * _median([x for p in plains for x in getattr(p, stage)])
                for name, stage in PLAIN_STAGE.items()}
    plain_ms["work"] = plain_ms["step"] = 1000 * _median([x for p in plains for x in p.step_s])
    rows = [[name, "work" if name in hops.WORK else "orchestration", f"{plain_ms.get(name, 0.0):.1f}",
             *(f"{med[v].get(name, float('nan')):.1f}" for v in loops)] for name in hops.NAMES]
    rows += [[k, "", f"{plain_ms.get(k, 0.0):.1f}", *(f"{med[v].get(k, float('nan')):.1f}" for v in loops)]
             for k in ("work", "overhead", "step")]
    for label, key in (("driver CPU per step", "driver_cpu_s"), ("driver awake per step", "awake")):
        rows.append([label, "(inside the hops above)", "",
                     *(f"{_driver_ms(runs, key):.1f}" for runs in loops.values())])
    rows.append(["steps cut", "", str(sum(len(p.step_s) for p in plains)), *(str(len(cut[v])) for v in loops)])
    report.table("Where a step's time goes: median ms per step, each call and hand-over (hops.py; one process: "
                 "its stages, publish = export only, load = load_weights)", ["hop", "kind", "one process", *loops], rows)
    report.table("What each hop is", ["hop", "from -> to"], [list(h) for h in hops.HOPS])
    proc_cpu.report_cpu(report, {v: [r.trace.cpu_s for r in runs] for v, runs in loops.items()},
                        {v: [r.steps for r in runs] for v, runs in loops.items()})
    report.data |= {"plain_step_s": {v: [_step_s(p) for p in runs] for v, runs in paired.items()},
                    "plain": [p.__dict__ for p in plains], "loop_step_s": {v: [r.step_s for r in runs] for v, runs in loops.items()},
                   "overhead_pct": overhead, "hops_ms": med,
                   "hops_s": {v: [h.seconds for h in steps] for v, steps in cut.items()}}
    proc_cpu.report_idle(report, idle_ms_per_s)
    wake.report_wake(report, report.data["wake_ms"], hops.SEQUENTIAL_MESSAGES)
    if DEFAULT in overhead:
        goal(report, overhead[DEFAULT], med[DEFAULT], _idle_note(report.data, DEFAULT) + _wake_note(report.data))


def _median(values: list[float]) -> float:
    return common.summarize(values).median if values else float("nan")


def _driver_ms(runs: list[grpo_job.LoopRun], key: str) -> float:
    """The driver's CPU, or its time not spent waiting in `ray.wait`, per timed step (ms; median over runs)."""
    values = []
    for r in runs:
        t = r.trace
        seconds = t.driver_cpu_s if key == "driver_cpu_s" else r.wall_s - t.driver_wait_s
        values.append(1000 * seconds / r.steps)
    return common.summarize(values).median if values else float("nan")


def _idle_note(data: dict[str, Any], variant: str) -> str:
    """What the cluster's waiting Ray workers cost per step by being there ("" on a page without the
    idle actor's measurement)."""
    cost = proc_cpu.idle_cost(data, variant)
    if cost is None:
        return ""
    step_ms = data["hops_ms"][variant]["step"]
    return (f". Beside the two processes that work, the cluster runs at least {cost.workers} Ray worker processes, "
            f"and an idle one costs {cost.ms_per_s:.1f} ms of CPU per second here (Ray's fixed 10 ms signal check): "
            f"~{cost.ms_per_step(step_ms / 1000):.0f} ms of CPU per {step_ms:.0f} ms step before any hand-over")


def _wake_note(data: dict[str, Any]) -> str:
    """A lower estimate of what the step's messages in a row cost at this machine's latencies ("" on a page
    without wake.py's measurement)."""
    if "wake_ms" not in data:
        return ""
    low = wake.floor(data["wake_ms"], hops.SEQUENTIAL_MESSAGES)
    plain_ms = 1000 * _median([x for p in data["plain"] for x in p["step_s"]])
    return (f". A one-way call between two Ray processes takes {low.waited_ms:.1f} ms here when the receiver had "
            f"waited {wake.WAITED_MS} ms ({low.busy_ms:.1f} ms after {wake.BUSY_MS} ms), and the step passes "
            f"{low.waited + low.busy} messages in a row, {low.waited} of them to a process that had waited longer: at "
            f"least ~{low.ms:.0f} ms, {100 * low.ms / plain_ms:.1f}% of the one-process step, for the messages alone; "
            "only fewer messages in a row would lower that")


def goal(report: common.Report, overhead: common.Stat, hops_ms: dict[str, float], idle_note: str = "") -> None:
    """The per-step goal, met only when both measures agree: the paired per-step ratio (noisy: the
    machine's speed moves by several % even between turns seconds apart) and the orchestration hops' share
    of the variant's median step (`hops.py`'s cut of the same runs)."""
    share = 100 * hops_ms["overhead"] / hops_ms["step"]
    met = overhead.median <= GOAL_PCT and share <= GOAL_PCT
    plain_work = 1000 * _median([x for p in report.data["plain"] for x in p["step_s"]])
    work_note = (f"; the work itself (median ms per step): {hops_ms['work']:.1f} in the loop, {plain_work:.1f} in "
                 f"one process ({100 * (hops_ms['work'] / plain_work - 1):+.1f}%)")
    report.goals.append(common.Goal(
        f"Ray loop per-step time within {GOAL_PCT:g}% of one plain process at ~0.5-1 s steps "
        f"(here {hops_ms['step'] / 1000:.2f} s)",
        f"<= {GOAL_PCT:g}% extra, paired and by the hops", f"{overhead.fmt()}% paired; orchestration hops "
        f"{hops_ms['overhead']:.1f} of {hops_ms['step']:.0f} ms per step ({share:.1f}%)", met,
        "" if met else f"per-repetition overheads {[round(v, 1) for v in overhead.values]}%{work_note}. Every "
        "hand-over between processes needs a time slice on the 2 cores, which the work shares "
        f"(load average {report.machine['loadavg_at_start'][0]:.1f} at start){idle_note}",
    ))


def regoal() -> None:
    """Rewrite the committed pages' goals (every completion length's) from their JSON alone (the tables
    stay as measured)."""
    for path in sorted(common.RESULTS.glob("orchestration_overhead*.json")):
        report = common.Report.committed(path.stem)
        grpo, data = report.data, report.data.get("data")
        goal(report, common.Stat(**grpo["overhead_pct"][DEFAULT]), grpo["hops_ms"][DEFAULT],
             _idle_note(grpo, DEFAULT) + _wake_note(grpo))
        if data is not None:
            data_goal(report, common.Stat(**data["overhead_pct"]["chain"]), data["hops_ms"]["chain"])
        report.save()


def plot(report: common.Report, paired: dict[str, list[grpo_job.PlainRun]],
         loops: dict[str, list[grpo_job.LoopRun]]) -> None:
    fig, axes = common.new_figure(1)
    ax = axes[0]
    for k, (name, runs) in enumerate(loops.items()):
        ax.plot(range(len(runs)), [100 * (r.step_s / _step_s(p) - 1) for r, p in zip(runs, paired[name])], "s-",
                color=f"C{k}", label=f"Ray loop, {name}")
    ax.axhline(GOAL_PCT, color="grey", linestyle="--", label=f"goal {GOAL_PCT:g}%")
    ax.set(xlabel="repetition", ylabel="% over the one-process steps of the repetition",
           title="orchestration overhead")
    ax.legend()
    fig.tight_layout()
    fig.savefig(report.png_path(), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 timed steps, one repetition (results/quick/)")
    parser.add_argument("--cache", help="directory for the built model (default: a fresh temp dir)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (each variant in turns with the one-process job)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help=f"completion length: the step's length (default {TOKENS}: ~0.5 s here; "
                        "another length writes its own page)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--parts", default="grpo,data", help="grpo (the GRPO loop), data (the data flywheel's lane)")
    parser.add_argument("--data-cache", default="~/.cache/medgr2_ray", help="seed pool and tiny models (data part)")
    parser.add_argument("--g-steps", type=int, default=150, help="G's SFT steps on the seeds before the data part")
    parser.add_argument("--block", type=int, default=4,
                        help="GRPO part: steps per turn of the loop and of the one-process job")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="most seconds to wait for Ray's processes to go quiet after building a system")
    common.run_or_regoal(parser, run, regoal)


if __name__ == "__main__":
    main()
