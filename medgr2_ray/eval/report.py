"""The run report: `runs/<name>/report/index.html` plus PNG plots, built from the run directory alone.

Reads what a run leaves behind (the files `run_files.py` describes, and `config.yaml`) and writes: the
held-out accuracy as a table of evaluation point x modality in percent, with the change each stage made;
the timeline of which actor was busy when (`timeline.jsonl`, when the run wrote one); training curves
(the solver's SFT loss at every reported step, G's SFT loss, R's losses, GRPO reward and KL, reward per
round); a per-round account of candidates, kept and rejected with reasons; the Med-R1 transfer
matrices; and a browser of every generated candidate with filters and search (`browser.py`). No Ray, no
models, no server, no network: it can be rebuilt after the fact (`build_report(run_dir)`) and opened
from disk. Text is HTML-escaped: sample text is model output.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from medgr2_ray.eval import report_plots as plots
from medgr2_ray.eval.browser import browser_html, browser_row, decision, thumbnail
from medgr2_ray.eval.run_files import failure_counts, is_stage_point, read_candidates, read_evals, read_records
from medgr2_ray.eval.timeline import busy_seconds, read_timeline

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}
h2{border-bottom:1px solid #ddd;padding-bottom:2px;margin-top:1.6em} nav a{margin-right:1em}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
td.num,th.num{text-align:right} td.down{color:#b00020} td.up{color:#006400} tr.rejected{color:#888}
tr.undecided{color:#555;font-style:italic} img{margin:4px} .controls label{margin-right:1em;white-space:nowrap}
.controls{margin:.5em 0} #samples td.q{max-width:420px} .why{color:#666;font-size:11px;margin-top:3px}
details{margin:.5em 0} .note{color:#555;font-size:13px}"""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def accuracy_table(evals: dict[str, dict[str, Any]]) -> str:
    """Evaluation point x modality, in percent, with the change each solver stage made to the overall."""
    if not evals:
        return "<p>No evaluation in this run.</p>"
    modalities = sorted({m for e in evals.values() for m in e.get("by_modality", {})})
    head = "".join(f"<th class='num'>{html.escape(m)}</th>" for m in modalities)
    rows, previous = [], None
    for name, ev in evals.items():
        acc = float(ev["accuracy"])
        change = "<td class='num'>-</td>"
        if is_stage_point(name) and previous is not None:
            delta = 100 * (acc - previous)
            change = f"<td class='num {'down' if delta < 0 else 'up' if delta > 0 else ''}'>{delta:+.1f}</td>"
        if is_stage_point(name):
            previous = acc
        cells = "".join(f"<td class='num'>{_pct(ev.get('by_modality', {}).get(m))}</td>" for m in modalities)
        rows.append(f"<tr><th>{html.escape(name)}</th><td class='num'><b>{_pct(acc)}</b> "
                    f"({ev.get('correct', '?')}/{ev.get('total', '?')})</td>{change}{cells}"
                    f"<td class='num'>{_pct(ev.get('greedy_accuracy'))}</td>"
                    f"<td class='num'>{_pct(ev.get('blind_bound'))}</td></tr>")
    return (f"<table id='accuracy-table'><tr><th>evaluation point</th><th class='num'>overall</th>"
            f"<th class='num'>change (points)</th>{head}<th class='num'>greedy exact match</th>"
            f"<th class='num'>image-blind bound</th></tr>{''.join(rows)}</table>"
            "<p class='note'>Length-normalised option likelihood on held-out studies; the image-blind bound is "
            "the best accuracy an ordering of the options that never looks at the image reaches. "
            "Rows other than untrained/after_* are other test sets.</p>")


def timeline_section(run_dir: Path, out: Path) -> str:
    """The Gantt chart and wall time per kind of work; "" when the run wrote no timeline."""
    spans = read_timeline(run_dir)
    png = plots.gantt(out / "timeline.png", spans)
    if png is None:
        return ""
    busy = "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{s:.1f}</td></tr>"
                   for k, s in busy_seconds(spans).items())
    return (f"<h2 id='timeline'>Timeline</h2><img src='{png}' alt='timeline'>"
            f"<table><tr><th>kind of work</th><th class='num'>wall seconds</th></tr>{busy}</table>")


def sft_loss_section(records: list[dict[str, Any]], out: Path) -> str:
    """The solver's SFT loss at every reported step (plot and the points themselves)."""
    steps, losses = plots.series(records, "solver_sft", "loss")
    png = plots.line_plot(out / "sft_loss.png", "solver SFT loss (window mean per report)",
                          {"solver": (steps, losses)}, "step", "loss")
    if png is None:
        return ""
    rows = "".join(f"<tr><td class='num'>{s}</td><td class='num'>{v:.4f}</td></tr>" for s, v in zip(steps, losses))
    return (f"<img src='{png}' alt='solver SFT loss'><details><summary>the {len(steps)} reported points</summary>"
            f"<table id='sft-loss'><tr><th>step</th><th>loss</th></tr>{rows}</table></details>")


def curve_images(records: list[dict[str, Any]], out: Path) -> str:
    """Every other logged curve, as images."""
    s = plots.series
    made = [
        plots.line_plot(out / "round_reward.png", "generated samples per round",
                        {"reward mean": s(records, "round", "reward_mean"),
                         "kept reward mean": s(records, "round", "kept_reward_mean")}, "round", "R's reward"),
        plots.line_plot(out / "generator_loss.png", "generator SFT loss", {"G": s(records, "generator_sft", "loss")},
                        "step"),
        plots.line_plot(out / "rm_loss.png", "reward-model loss", {"mse": s(records, "reward_model", "mse"),
                                                                    "answer NLL": s(records, "reward_model", "answer_nll")},
                        "step"),
        plots.line_plot(out / "rm_verdict.png", "R's belief in the stated answer (verifier)",
                        {"p(answer) where right": s(records, "reward_model", "p_right"),
                         "p(answer) where wrong": s(records, "reward_model", "p_wrong")}, "step"),
        plots.line_plot(out / "grpo_reward.png", "GRPO reward", {"reward": s(records, "grpo", "reward_mean")}, "step"),
        plots.line_plot(out / "grpo_kl.png", "GRPO KL to reference", {"kl": s(records, "grpo", "kl")}, "step"),
    ]
    return "".join(f"<img src='{m}' alt='{m}'>" for m in made if m)


def rounds_table(candidates: list[tuple[str, Any]], failures: dict[str, int]) -> str:
    """Per data folder: candidates, kept, rejected by reason, outputs that did not parse."""
    folders = list(dict.fromkeys([f for f, _ in candidates] + list(failures)))
    if not folders:
        return "<p>No generated samples in this run.</p>"
    reasons = sorted({s.provenance.reason or "unknown" for _, s in candidates if s.provenance.selected is False})
    rows = []
    for folder in folders:
        mine = [s for f, s in candidates if f == folder]
        why = Counter(s.provenance.reason or "unknown" for s in mine if s.provenance.selected is False)
        kept = sum(1 for s in mine if decision(s) == "kept")
        rows.append(f"<tr><th>{html.escape(folder)}</th><td class='num'>{failures.get(folder, 0)}</td>"
                    f"<td class='num'>{len(mine)}</td><td class='num'>{kept}</td>"
                    + "".join(f"<td class='num'>{why.get(r, 0)}</td>" for r in reasons) + "</tr>")
    head = "".join(f"<th class='num'>rejected: {html.escape(r)}</th>" for r in reasons)
    return (f"<table><tr><th>data</th><th class='num'>did not parse</th><th class='num'>candidates</th>"
            f"<th class='num'>kept</th>{head}</tr>{''.join(rows)}</table>")


def transfer_section(run_dir: Path, out: Path) -> str:
    """Med-R1 transfer matrices (`eval/transfer_<protocol>.json`): heat map and table per protocol."""
    def cell(c: dict[str, Any], bold: bool = False) -> str:
        greedy = "" if c.get("greedy_accuracy") is None else f" <small>({c['greedy_accuracy']:.0%})</small>"
        text = f"{c['accuracy']:.0%}{greedy}"
        return f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>"

    parts = []
    for path in sorted((run_dir / "eval").glob("transfer_*.json")):
        m = json.loads(path.read_text())
        cols = m["columns"]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(f"<tr><th>{html.escape(r)}</th><td>{m['train_counts'][r]}</td>"
                       + "".join(cell(m["cells"][r][c], c == r) for c in cols) + "</tr>" for r in m["rows"])
        body += "<tr><th>untrained</th><td>0</td>" + "".join(cell(m["baseline"][c]) for c in cols) + "</tr>"
        body += "<tr><th>image-blind bound</th><td>-</td>" + "".join(f"<td>{m['blind_bound'][c]:.0%}</td>" for c in cols) + "</tr>"
        body += "<tr><th>n test</th><td>-</td>" + "".join(f"<td>{m['test_counts'][c]}</td>" for c in cols) + "</tr>"
        notes = "; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in {**m["skipped"], **m["unusable"]}.items())
        png = plots.transfer_heatmap(out / f"{path.stem}.png", m)
        parts.append(
            f"<h3>{html.escape(m['protocol'])} ({m['steps']} SFT steps per row)</h3><img src='{png}'>"
            f"<table><tr><th>fine-tuned on \\ tested on</th><th>n train</th>{head}</tr>{body}</table>"
            f"<p>Likelihood accuracy (greedy exact match in brackets), diagonal bold. In-domain mean "
            f"{m['in_domain']:.1%}, out-of-domain mean {m['out_of_domain']:.1%}, one image-blind order over all "
            f"columns {m['blind_bound_all']:.1%}. {notes}</p>")
    return ("<h2 id='transfer'>Transfer: Med-R1 cross-modality / cross-task protocols</h2>" + "\n".join(parts)) if parts else ""


def build_report(run_dir: str | Path) -> Path:
    """Write `report/index.html` and its PNGs for a run directory; returns the HTML path."""
    run = Path(run_dir)
    out = run / "report"
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    records, evals = read_records(run), read_evals(run)
    candidates = read_candidates(run)
    rows = [browser_row(folder, s, thumbnail(s, thumbs)) for folder, s in candidates]
    accuracy_png = plots.accuracy_plot(out / "accuracy.png", evals)
    timeline = timeline_section(run, out)
    config = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (("accuracy", "accuracy"), ("timeline", "timeline"),
                  ("curves", "training curves"), ("samples", "generated samples"), ("config", "config"))
                  if a != "timeline" or timeline)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medgr2 run {html.escape(run.name)}</title>
<style>{_STYLE}</style></head><body><h1>Run {html.escape(run.name)}</h1><nav>{nav}</nav>
<h2 id="accuracy">Held-out accuracy</h2>{accuracy_table(evals)}
{f"<img src='{accuracy_png}' alt='accuracy per modality'>" if accuracy_png else ""}
{timeline}
<h2 id="curves">Training curves</h2>{sft_loss_section(records, out)}{curve_images(records, out)}
{transfer_section(run, out)}
<h2 id="samples">Generated samples</h2>{rounds_table(candidates, failure_counts(run))}
{browser_html(rows) if rows else ""}
<h2 id="config">Resolved config</h2><pre>{html.escape(config)}</pre></body></html>"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
