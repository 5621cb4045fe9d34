"""The report's sample browser: every generated candidate, filterable, in plain HTML + JS.

All candidates of the run (`data/*/samples.jsonl`) go into the page as one JSON block; a small script
fills the filters (round, modality, task, strategy, decision, rejection reason) from the data, applies
them and a text search, and draws the matching rows a page at a time, saying how many rows match and how
many there are: nothing is left out silently. No server, no network: the page works from `file://`.
Model text is put into the page with `textContent`, never as HTML, and the JSON block escapes `<`, so a
generated sample cannot inject markup or script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from medgr2_ray.types import Sample

PAGE_SIZE = 100  # rows drawn at once; the page says how many match and lets you move through all of them
FILTERS = (("round", "round"), ("modality", "modality"), ("task", "task"), ("strategy", "strategy"),
           ("decision", "kept / rejected"), ("reason", "rejection reason"))


def thumbnail(sample: Sample, thumbs: Path) -> str:
    """A 96 px JPEG of the sample's image (one per image, shared by its samples); "" when unreadable."""
    target = thumbs / f"{sample.image_id}.jpg"
    if not target.exists() and Path(sample.image_path).is_file():
        with Image.open(sample.image_path) as img:
            img.convert("RGB").resize((96, 96)).save(target, quality=80)
    return f"thumbs/{target.name}" if target.exists() else ""


def decision(sample: Sample) -> str:
    """kept, rejected, or undecided (a candidate selection never saw)."""
    return {True: "kept", False: "rejected", None: "undecided"}[sample.provenance.selected]


def browser_row(folder: str, sample: Sample, thumb: str) -> dict[str, Any]:
    """One candidate as the browser's record: the sample, every provenance field, its data folder."""
    p = sample.provenance
    return {
        "id": sample.sample_id, "folder": folder, "round": p.round, "img": thumb,
        "modality": sample.modality.value, "task": sample.task_type.value,
        "strategy": p.prompt_strategy.value if p.prompt_strategy else "-",
        "question": sample.question, "options": list(sample.options), "answer": sample.answer,
        "rationale": sample.rationale, "reward": p.reward, "decision": decision(sample),
        "reason": p.reason or ("-" if p.selected is not False else "unknown"),
        "g": p.model_version, "r": p.rm_version, "producer": p.producer,
    }


def _json_block(rows: list[dict[str, Any]]) -> str:
    # `<` escaped: "</script>" inside model text must not end the block.
    return json.dumps(rows, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def browser_html(rows: list[dict[str, Any]]) -> str:
    """The browser section: filter controls, the table, the data block and the script."""
    controls = "".join(f"<label>{label} <select id='f-{key}' data-key='{key}'><option value=''>all</option>"
                       f"</select></label>" for key, label in FILTERS)
    return f"""<div id="browser">
<div class="controls">{controls}
<label>search <input id="f-text" type="search" placeholder="question, options, answer, rationale, id"></label>
<label>sort <select id="f-sort"><option value="reward">reward, high first</option>
<option value="round">round, then reward</option></select></label></div>
<p id="count">{len(rows)} candidates (enable JavaScript to browse them)</p>
<div class="pager"><button id="prev">previous {PAGE_SIZE}</button> <button id="next">next {PAGE_SIZE}</button></div>
<table id="samples"><thead><tr><th>image</th><th>round</th><th>modality</th><th>task</th><th>strategy</th>
<th>question</th><th>options</th><th>answer</th><th>reward</th><th>decision</th><th>reason</th><th>G v</th>
<th>R v</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="sample-data">{_json_block(rows)}</script>
<script>{BROWSER_JS}</script></div>"""


BROWSER_JS = """
(function () {
  const rows = JSON.parse(document.getElementById('sample-data').textContent);
  const PAGE = %d;
  const keys = ['round', 'modality', 'task', 'strategy', 'decision', 'reason'];
  let page = 0;
  for (const key of keys) {  // each filter offers exactly the values present, with their counts
    const counts = new Map();
    for (const r of rows) counts.set(String(r[key]), (counts.get(String(r[key])) || 0) + 1);
    const values = [...counts.keys()].sort((a, b) => (isNaN(a) || isNaN(b)) ? a.localeCompare(b) : a - b);
    const select = document.getElementById('f-' + key);
    for (const v of values) select.add(new Option(v + ' (' + counts.get(v) + ')', v));
  }
  const text = r => [r.id, r.question, r.options.join(' '), r.answer, r.rationale].join(' ').toLowerCase();
  function matching() {
    const wanted = keys.map(k => [k, document.getElementById('f-' + k).value]).filter(kv => kv[1] !== '');
    const needle = document.getElementById('f-text').value.trim().toLowerCase();
    const out = rows.filter(r => wanted.every(([k, v]) => String(r[k]) === v) && (!needle || text(r).includes(needle)));
    const reward = r => (r.reward === null ? -Infinity : r.reward);
    if (document.getElementById('f-sort').value === 'round') out.sort((a, b) => a.round - b.round || reward(b) - reward(a));
    else out.sort((a, b) => reward(b) - reward(a));
    return out;
  }
  function cell(tr, value, cls) {
    const td = tr.insertCell();
    td.textContent = value;
    if (cls) td.className = cls;
    return td;
  }
  function draw() {
    const found = matching();
    page = Math.max(0, Math.min(page, Math.ceil(found.length / PAGE) - 1));
    const first = page * PAGE, shown = found.slice(first, first + PAGE);
    document.getElementById('count').textContent = found.length === 0 ? 'no candidate matches (' + rows.length + ' in all)'
      : 'rows ' + (first + 1) + '-' + (first + shown.length) + ' of ' + found.length + ' matching (' + rows.length + ' candidates in all)';
    document.getElementById('prev').disabled = page === 0;
    document.getElementById('next').disabled = first + PAGE >= found.length;
    const body = document.querySelector('#samples tbody');
    body.replaceChildren();
    for (const r of shown) {
      const tr = body.insertRow();
      tr.className = r.decision;
      const img = document.createElement('img');
      if (r.img) { img.src = r.img; img.width = 96; img.loading = 'lazy'; }
      tr.insertCell().appendChild(img);
      cell(tr, r.round); cell(tr, r.modality); cell(tr, r.task); cell(tr, r.strategy);
      const q = cell(tr, r.question, 'q');
      if (r.rationale) { const d = document.createElement('div'); d.className = 'why'; d.textContent = r.rationale; q.appendChild(d); }
      cell(tr, r.options.join(' | ')); cell(tr, r.answer);
      cell(tr, r.reward === null ? '-' : r.reward.toFixed(2)); cell(tr, r.decision); cell(tr, r.reason);
      cell(tr, 'v' + r.g); cell(tr, r.r < 0 ? '-' : 'v' + r.r);
    }
  }
  for (const el of document.querySelectorAll('#browser select, #f-text')) el.addEventListener('input', () => { page = 0; draw(); });
  document.getElementById('prev').addEventListener('click', () => { page -= 1; draw(); });
  document.getElementById('next').addEventListener('click', () => { page += 1; draw(); });
  draw();
})();
""" % PAGE_SIZE
