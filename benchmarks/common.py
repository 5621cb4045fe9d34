"""Shared plumbing of the benchmark scripts: environment, machine description, repeated timing with
median and min-max, tables, goal lines, and the JSON/Markdown/PNG results under benchmarks/results/.

Every script measures the things it compares side by side in ONE run (ratios between numbers taken
minutes apart on a 2-core machine shared with other work mean little) and writes:
    results/<name>.json  machine, settings, every repetition, the summary table, the goals
    results/<name>.md    the same table and goal lines as Markdown (collect.py builds README.md from the JSON)
    results/<name>.png   a plot of the main numbers
`--quick` runs a small smoke version and writes under results/quick/ (not committed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Before torch/transformers/ray are imported by a script: offline, one thread, no usage stats.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from medgr2_ray.loop.runtime import lean_local_cluster  # noqa: E402

lean_local_cluster()  # the clusters the benchmarks start run as `medgr2 run`'s local cluster does

RESULTS = Path(__file__).resolve().parent / "results"
# Ray starts its worker processes at niceness 15, below the driver and Ray's own processes. On cores
# that other work shares, that alone made the same compute 1.5-2x slower in an actor than in this process
# (niceness 0): a difference of scheduling priority, not of orchestration. The benchmarks that compare a
# Ray loop with one process start Ray with its workers at this process's priority, so both sides compete
# for the cores on equal terms (on an otherwise idle machine the two settings measure the same).
RAY_SYSTEM_CONFIG = {"worker_niceness": 0}
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stat:
    """Median and range of repeated measurements (the unit is the caller's)."""

    median: float
    lo: float
    hi: float
    n: int
    values: tuple[float, ...]

    def fmt(self, digits: int = 3) -> str:
        """`median [min-max]` with `digits` significant digits."""
        return f"{self.median:.{digits}g} [{self.lo:.{digits}g}-{self.hi:.{digits}g}]"


def summarize(values: Sequence[float]) -> Stat:
    """Median, min and max of measurements (at least one)."""
    if not values:
        raise ValueError("summarize: no measurements")
    vals = tuple(float(v) for v in values)
    return Stat(statistics.median(vals), min(vals), max(vals), len(vals), vals)


def ratio_stat(num: Sequence[float], den: Sequence[float]) -> Stat:
    """Per-repetition ratios num[i]/den[i] (pairs measured back to back), summarised."""
    if len(num) != len(den):
        raise ValueError(f"ratio_stat: {len(num)} numerators vs {len(den)} denominators")
    return summarize([a / b for a, b in zip(num, den)])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds one call takes (perf_counter) and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclass(frozen=True)
class Goal:
    """A target from the issue, what was measured, and (when missed) an honest reason."""

    name: str
    target: str
    measured: str
    met: bool
    why: str = ""

    def line(self) -> str:
        """One Markdown line: MET / NOT MET, and the reason when not met."""
        head = f"- **{self.name}**: target {self.target}; measured {self.measured} -> {'MET' if self.met else 'NOT MET'}"
        return head + (f". {self.why}" if self.why else "")


LEARNING_GOAL = "mean >= 65%, every seed >= 55%, >= 30 points over untrained"  # the learning goal


def learning_goal_met(summary: dict) -> bool:
    """The learning goal checked on a summary with `mean`, `min` and `gain_over_untrained` (fractions)."""
    return summary["mean"] >= 0.65 and summary["min"] >= 0.55 and summary["gain_over_untrained"] >= 0.30


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven) under 'either arm wins a pair at 1/2'."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(max(wins, losses), n + 1)) / 2**n
    return min(1.0, 2 * tail)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, RAM, GPU, library versions, date, load."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        # Other work shares these cores: the load average says how noisy the run was.
        "loadavg_at_start": list(os.getloadavg()),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


def run_or_regoal(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], None],
                  regoal: Callable[[], None]) -> None:
    """A script's entry: measure (`run`), or with `--regoal` judge the committed page again from its JSON."""
    parser.add_argument("--regoal", action="store_true", help="rewrite the committed page's goals from its JSON")
    args = parser.parse_args()
    if args.regoal:
        regoal()
    else:
        run(args)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text on a terminal)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


@dataclass
class Report:
    """Everything one benchmark run writes; `save` prints it and writes JSON + Markdown."""

    name: str
    quick: bool
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=machine)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (title, markdown)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def committed(cls, name: str) -> "Report":
        """The committed page `name` as measured (tables, notes, data) without its goals: a script's
        `--regoal` judges them again from the JSON alone, so the page's verdicts follow the script's rules."""
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        return cls(saved["name"], False, saved["settings"], machine=saved["machine"],
                   tables=[(t["title"], t["markdown"]) for t in saved["tables"]], notes=saved["notes"],
                   data=saved["data"])

    @property
    def out_dir(self) -> Path:
        """results/ for full runs, results/quick/ for smoke runs (not committed)."""
        path = RESULTS / "quick" if self.quick else RESULTS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Add a table and print it right away (a long run shows progress)."""
        md = markdown_table(headers, rows)
        self.tables.append((title, md))
        print(f"\n## {title}\n{md}", flush=True)

    def markdown(self) -> str:
        """The results page of this run."""
        m = self.machine
        parts = [
            f"# {self.name}{' (quick)' if self.quick else ''}",
            f"Measured {m['date_utc']} on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM"
            f"{', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}; torch {m['torch']}, ray {m.get('ray')}, "
            f"transformers {m['transformers']}; load average at start {m['loadavg_at_start'][0]:.2f} "
            f"(other work shares the cores). Cells: median [min-max] over repetitions.",
        ]
        for title, md in self.tables:
            parts += [f"## {title}", md]
        if self.goals:
            parts += ["## Goals", *(g.line() for g in self.goals)]
        if self.notes:
            parts += ["## Notes", *(f"- {n}" for n in self.notes)]
        return "\n\n".join(parts) + "\n"

    def save(self) -> Path:
        """Write <name>.json and <name>.md; print the goal lines. Returns the JSON path."""
        for goal in self.goals:
            print(goal.line(), flush=True)
        for note in self.notes:
            print(f"note: {note}", flush=True)
        payload = {
            "name": self.name, "quick": self.quick, "machine": self.machine, "settings": self.settings,
            "tables": [{"title": t, "markdown": md} for t, md in self.tables],
            "goals": [asdict(g) for g in self.goals], "notes": self.notes, "data": _jsonable(self.data),
        }
        path = self.out_dir / f"{self.name}.json"
        path.write_text(json.dumps(payload, indent=1))
        (self.out_dir / f"{self.name}.md").write_text(self.markdown())
        print(f"\nwrote {path} and {path.with_suffix('.md')}", flush=True)
        return path

    def png_path(self) -> Path:
        """Where this run's plot goes."""
        return self.out_dir / f"{self.name}.png"


def _jsonable(obj: Any) -> Any:
    """Stats and numpy scalars as plain JSON values."""
    if isinstance(obj, Stat):
        return asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def new_figure(ncols: int = 1, width: float = 6.0) -> tuple[Any, Any]:
    """A matplotlib figure with `ncols` axes (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False)
    return fig, axes[0]


def errorbar(ax: Any, xs: Sequence[Any], stats: Sequence[Stat], label: str, **kw: Any) -> None:
    """Median with min-max whiskers."""
    med = np.array([s.median for s in stats])
    err = np.array([[s.median - s.lo for s in stats], [s.hi - s.median for s in stats]])
    ax.errorbar(list(xs), med, yerr=err, label=label, capsize=3, marker="o", **kw)


def medical_images() -> list[np.ndarray]:
    """Real medical images as uint8 RGB: pydicom-data's CT and MR slices through our own ingestion."""
    from pydicom.data import get_testdata_file

    from medgr2_ray.data.decoders import IngestOptions
    from medgr2_ray.data.ingest import decode_bytes

    out = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = Path(get_testdata_file(name))
        out.append(decode_bytes(path.read_bytes(), path.name, IngestOptions(salt=b"benchmarks"))[0].rgb)
    return out


def single_thread() -> None:
    """One torch thread: other processes share the 2 cores (and Ray workers get their own)."""
    import torch

    torch.set_num_threads(1)


# Vision placeholder tokens a rollout must never sample (a sampled one breaks the prompt's image
# accounting when the learner re-encodes prompt + completion). TRL suppresses <|image_pad|> itself.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids() -> list[int]:
    """Their ids in the offline tiny tokenizer (special tokens take the first ids, in order)."""
    from medgr2_ray.models.tokenizer import SPECIAL_TOKENS

    return [SPECIAL_TOKENS.index(t) for t in VISION_TOKENS]


def suppress_vision_tokens() -> None:
    """Make `engines.hf` sample from (and report log-probs under) a distribution without the vision
    tokens. A benchmark-side patch standing in for a suppress-tokens option HFEngine lacks; also
    usable as a Ray `worker_process_setup_hook` ("common.suppress_vision_tokens") for rollout actors."""
    import torch

    import medgr2_ray.engines.hf as hf

    original = getattr(hf.processed_logprobs, "__wrapped__", hf.processed_logprobs)
    ids = vision_token_ids()

    def masked(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
        logits = logits.float().clone()
        logits[..., ids] = float("-inf")
        return original(logits, temperature, top_k, top_p)

    masked.__wrapped__ = original  # type: ignore[attr-defined]
    hf.processed_logprobs = masked


def suppress_vision_tokens_on_import() -> None:
    """`suppress_vision_tokens` as a Ray `worker_process_setup_hook`, applied only when (if ever) the
    worker imports `medgr2_ray.engines.hf`: Ray runs the hook in every worker it starts (Ray Train's
    helpers, idle workers), and importing torch and transformers there cost seconds of CPU each."""
    import importlib.abc
    import sys

    target = "medgr2_ray.engines.hf"
    if target in sys.modules:
        suppress_vision_tokens()
        return

    class _Patch(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target_module: Any = None) -> Any:
            if name != target:
                return None
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def patched(module: Any) -> None:
                exec_module(module)
                suppress_vision_tokens()

            spec.loader.exec_module = patched  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _Patch())
