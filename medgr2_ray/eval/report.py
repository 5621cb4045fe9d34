"""The run report: `runs/<name>/report/index.html` plus PNG plots, built from the run directory alone.

Reads what a run leaves behind (`metrics.jsonl`, `data/round_k/samples.jsonl`, `eval/*.json`,
`config.yaml`) and writes plots (reward per round, reward-model loss, GRPO reward and KL over steps,
accuracy per modality at each evaluation) and a browsable table of generated samples with their image
thumbnails, reward scores and selection decisions. No Ray, no models: it can be rebuilt after the fact
with the same code (`build_report(run_dir)`). Text is HTML-escaped: sample text is model output.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from medgr2_ray.data.store import read_samples  # noqa: E402
from medgr2_ray.types import Sample  # noqa: E402

MAX_ROWS = 300  # samples shown per round; the JSONL files hold all of them


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict[str, Any]], stage: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("stage") == stage and r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(out: Path, title: str, lines: dict[str, tuple[list[int], list[float]]], xlabel: str) -> str | None:
    """One line plot; None when there is nothing to draw."""
    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out.name


def _accuracy_plot(out: Path, evals: dict[str, dict[str, Any]]) -> str | None:
    """Grouped bars: accuracy per modality at each evaluation point (before/after each stage)."""
    if not evals:
        return None
    modalities = sorted({m for e in evals.values() for m in e.get("by_modality", {})})
    if not modalities:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    width = 0.8 / len(evals)
    for i, (name, result) in enumerate(evals.items()):
        xs = [j + i * width for j in range(len(modalities))]
        ax.bar(xs, [result["by_modality"].get(m, 0.0) for m in modalities], width, label=f"{name} ({result['accuracy']:.0%})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(modalities))], modalities, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("held-out accuracy per modality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out.name


def _thumbnail(sample: Sample, thumbs: Path) -> str:
    target = thumbs / f"{sample.image_id}.jpg"
    if not target.exists() and Path(sample.image_path).is_file():
        with Image.open(sample.image_path) as img:
            img.convert("RGB").resize((96, 96)).save(target, quality=80)
    return f"thumbs/{target.name}" if target.exists() else ""


def _sample_rows(samples: list[Sample], thumbs: Path) -> str:
    rows = []
    for s in sorted(samples, key=lambda s: -(s.provenance.reward or -1e9))[:MAX_ROWS]:
        src = _thumbnail(s, thumbs)
        decision = {True: "kept", False: "rejected", None: "-"}[s.provenance.selected]
        reward = "-" if s.provenance.reward is None else f"{s.provenance.reward:.2f}"
        options = " | ".join(html.escape(o) for o in s.options)
        strategy = s.provenance.prompt_strategy.value if s.provenance.prompt_strategy else "-"
        rows.append(
            f"<tr class='{decision}'><td><img src='{src}' width=96></td><td>{html.escape(s.modality.value)}</td>"
            f"<td>{html.escape(s.question)}</td><td>{options}</td><td>{html.escape(s.answer)}</td>"
            f"<td>{reward}</td><td>{decision}</td><td>{html.escape(strategy)}</td>"
            f"<td>v{s.provenance.model_version}</td></tr>"
        )
    return "\n".join(rows)


def _round_tables(run_dir: Path, thumbs: Path) -> str:
    parts = []
    for round_dir in sorted((run_dir / "data").glob("round_*"), key=lambda p: int(p.name.split("_")[1])):
        path = round_dir / "samples.jsonl"
        if not path.is_file():
            continue
        samples = read_samples(path)
        kept = sum(1 for s in samples if s.provenance.selected)
        parts.append(
            f"<h3>{round_dir.name}: {len(samples)} samples, {kept} kept</h3><table><tr><th>image</th><th>modality</th>"
            "<th>question</th><th>options</th><th>answer</th><th>reward</th><th>selection</th><th>strategy</th>"
            f"<th>generator</th></tr>{_sample_rows(samples, thumbs)}</table>"
        )
    return "\n".join(parts) or "<p>No generated samples in this run.</p>"


def _evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Accuracy points (before/after each stage, external sets); transfer matrices and error lists are
    other files in the same folder and are shown elsewhere."""
    found = sorted((run_dir / "eval").glob("*.json"), key=lambda p: p.stat().st_mtime)
    loaded = {p.stem: json.loads(p.read_text()) for p in found if not p.name.startswith("transfer_")}
    return {k: v for k, v in loaded.items() if isinstance(v, dict) and "accuracy" in v}


def _transfer_heatmap(out: Path, m: dict[str, Any]) -> str:
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


def _transfer_cell(c: dict[str, Any], bold: bool = False) -> str:
    greedy = "" if c.get("greedy_accuracy") is None else f" <small>({c['greedy_accuracy']:.0%})</small>"
    text = f"{c['accuracy']:.0%}{greedy}"
    return f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>"


def _transfer_section(run_dir: Path, out: Path) -> str:
    """Med-R1 transfer matrices (`eval/transfer_<protocol>.json`): heat map and table per protocol."""
    parts = []
    for path in sorted((run_dir / "eval").glob("transfer_*.json")):
        m = json.loads(path.read_text())
        cols = m["columns"]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(f"<tr><th>{html.escape(r)}</th><td>{m['train_counts'][r]}</td>"
                       + "".join(_transfer_cell(m["cells"][r][c], c == r) for c in cols) + "</tr>" for r in m["rows"])
        body += "<tr><th>untrained</th><td>0</td>" + "".join(_transfer_cell(m["baseline"][c]) for c in cols) + "</tr>"
        body += "<tr><th>image-blind bound</th><td>-</td>" + "".join(f"<td>{m['blind_bound'][c]:.0%}</td>" for c in cols) + "</tr>"
        body += "<tr><th>n test</th><td>-</td>" + "".join(f"<td>{m['test_counts'][c]}</td>" for c in cols) + "</tr>"
        notes = "; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in {**m["skipped"], **m["unusable"]}.items())
        png = _transfer_heatmap(out / f"{path.stem}.png", m)
        parts.append(
            f"<h3>{html.escape(m['protocol'])} ({m['steps']} SFT steps per row)</h3><img src='{png}'>"
            f"<table><tr><th>fine-tuned on \\ tested on</th><th>n train</th>{head}</tr>{body}</table>"
            f"<p>Likelihood accuracy (greedy exact match in brackets), diagonal bold. In-domain mean "
            f"{m['in_domain']:.1%}, out-of-domain mean {m['out_of_domain']:.1%}, one image-blind order over all "
            f"columns {m['blind_bound_all']:.1%}. {notes}</p>")
    return "\n".join(parts)


def _plots(records: list[dict[str, Any]], evals: dict[str, dict[str, Any]], out: Path) -> list[str]:
    made = [
        _plot(out / "round_reward.png", "generated samples per round",
              {"reward mean": _series(records, "round", "reward_mean"),
               "kept reward mean": _series(records, "round", "kept_reward_mean")}, "round"),
        _plot(out / "rm_loss.png", "reward-model loss", {"mse": _series(records, "reward_model", "mse"),
                                                           "answer NLL": _series(records, "reward_model", "answer_nll")},
              "step"),
        _plot(out / "rm_verdict.png", "R's belief in the stated answer (verifier)",
              {"p(answer) where right": _series(records, "reward_model", "p_right"),
               "p(answer) where wrong": _series(records, "reward_model", "p_wrong")}, "step"),
        _plot(out / "grpo_reward.png", "GRPO reward", {"reward": _series(records, "grpo", "reward_mean")}, "step"),
        _plot(out / "grpo_kl.png", "GRPO KL to reference", {"kl": _series(records, "grpo", "kl")}, "step"),
        _plot(out / "sft_loss.png", "SFT loss", {"solver": _series(records, "solver_sft", "loss"),
                                                  "generator": _series(records, "generator_sft", "loss")}, "step"),
        _accuracy_plot(out / "accuracy.png", evals),
    ]
    return [m for m in made if m]


def build_report(run_dir: str | Path) -> Path:
    """Write `report/index.html` and its PNGs for a run directory; returns the HTML path."""
    run = Path(run_dir)
    out = run / "report"
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    records, evals = _records(run), _evals(run)
    images = "".join(f"<img src='{name}'>" for name in _plots(records, evals, out))
    eval_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['accuracy']:.1%} ({v['correct']}/{v['total']})</td>"
        f"<td>{v.get('blind_bound', 0):.1%}</td><td>{html.escape(json.dumps(v.get('by_modality', {})))}</td></tr>"
        for k, v in evals.items()
    )
    config = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    transfer = _transfer_section(run, out)
    if transfer:
        transfer = f"<h2>Transfer: Med-R1 cross-modality / cross-task protocols</h2>{transfer}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medgr2 run {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px;vertical-align:top}} tr.rejected{{color:#999}} img{{margin:4px}}</style>
</head><body><h1>Run {html.escape(run.name)}</h1>
<h2>Evaluation (held-out studies)</h2><table><tr><th>point</th><th>accuracy</th><th>image-blind bound</th>
<th>per modality</th></tr>{eval_rows}</table>
<h2>Plots</h2>{images}
{transfer}
<h2>Generated samples</h2>{_round_tables(run, thumbs)}
<h2>Resolved config</h2><pre>{html.escape(config)}</pre></body></html>"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
