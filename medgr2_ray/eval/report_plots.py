"""The report's figures, as PNG files beside `report/index.html` (matplotlib, headless).

Line plots of logged figures (integer axes: rounds and steps are counts), accuracy per modality at each
evaluation point, the run's timeline as a Gantt chart (one row per actor, one colour per kind of work),
and the Med-R1 transfer heat maps. Each function returns the file name it wrote, or None when there was
nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medgr2_ray.messages import Span  # noqa: E402

Series = tuple[list[int], list[float]]


def series(records: list[dict[str, Any]], stage: str, key: str) -> Series:
    """(steps, values) of one figure of one stage in `metrics.jsonl`, nulls left out."""
    points = [(int(r["step"]), float(r[key])) for r in records if r.get("stage") == stage and r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def line_figure(title: str, lines: dict[str, Series], xlabel: str, ylabel: str = "") -> Any:
    """One line plot with an integer x axis (a matplotlib Figure); None when there is nothing to draw."""
    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o" if len(xs) <= 60 else None, markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs_all = sorted({x for xs, _ in lines.values() for x in xs})
    if len(xs_all) <= 12:  # few points (rounds): a tick at each, never a fractional one between
        ax.set_xticks(xs_all)
        if len(xs_all) == 1:
            ax.set_xlim(xs_all[0] - 1, xs_all[0] + 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def line_plot(out: Path, title: str, lines: dict[str, Series], xlabel: str, ylabel: str = "") -> str | None:
    """`line_figure` written to `out`; returns the file name, None when there was nothing to draw."""
    fig = line_figure(title, lines, xlabel, ylabel)
    if fig is None:
        return None
    fig.savefig(out)
    plt.close(fig)
    return out.name


def accuracy_plot(out: Path, evals: dict[str, dict[str, Any]]) -> str | None:
    """Grouped bars: accuracy per modality at each evaluation point (before/after each stage)."""
    modalities = sorted({m for e in evals.values() for m in e.get("by_modality", {})})
    if not evals or not modalities:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    width = 0.8 / len(evals)
    for i, (name, result) in enumerate(evals.items()):
        xs = [j + i * width for j in range(len(modalities))]
        ax.bar(xs, [100 * result["by_modality"].get(m, 0.0) for m in modalities], width,
               label=f"{name} ({result['accuracy']:.0%})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(modalities))], modalities, rotation=20, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("held-out accuracy per modality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out.name


def gantt(out: Path, spans: list[Span]) -> str | None:
    """The timeline: one row per actor (in order of first appearance), one bar per span, coloured by kind."""
    if not spans:
        return None
    actors = list(dict.fromkeys(s.actor for s in spans))
    kinds = list(dict.fromkeys(s.kind for s in spans))
    colours = plt.get_cmap("tab10" if len(kinds) <= 10 else "tab20")
    minutes = max(s.end for s in spans) > 300
    scale, unit = (60.0, "minutes") if minutes else (1.0, "seconds")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(actors) + 1.6), dpi=100)
    for k, kind in enumerate(kinds):
        bars = [((s.start / scale), max((s.end - s.start) / scale, 1e-3)) for s in spans if s.kind == kind]
        rows = [actors.index(s.actor) for s in spans if s.kind == kind]
        for (x, w), row in zip(bars, rows):
            ax.broken_barh([(x, w)], (row - 0.4, 0.8), color=colours(k), label=kind)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_yticks(range(len(actors)), actors, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} since the run started")
    ax.set_title("timeline: which actor was busy with what")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out.name


def transfer_heatmap(out: Path, m: dict[str, Any]) -> str:
    """Accuracy train-group x test-group (plus the untrained row) as an annotated heat map."""
    rows, cols = m["rows"], m["columns"]
    grid = [[m["cells"][r][c]["accuracy"] for c in cols] for r in rows] + [[m["baseline"][c]["accuracy"] for c in cols]]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 3, 0.45 * len(grid) + 2), dpi=100)
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.axhline(len(rows) - 0.5, color="white", linewidth=2)  # fine-tuned rows above, the untrained one below
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(len(grid)), [*rows, "untrained"], fontsize=8)
    ax.set_xlabel("tested on (held-out studies)")
    ax.set_ylabel("fine-tuned on")
    ax.set_title(f"{m['protocol']}: in-domain {m['in_domain']:.0%}, out-of-domain {m['out_of_domain']:.0%}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out.name
