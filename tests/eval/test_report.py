"""The run report is built from a run directory alone: the per-modality accuracy table in percent, the
solver's whole SFT loss curve, the timeline, plots for what was logged, and a sample browser with
filters over every candidate (no row cap); model text cannot inject markup."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgr2_ray.data.store import write_samples
from medgr2_ray.eval.report import build_report
from medgr2_ray.eval.timeline import busy_seconds, overlap, read_timeline, write_timeline
from medgr2_ray.messages import Span
from medgr2_ray.types import Modality, PromptStrategy, Provenance, Sample, TaskType

FIXTURES = Path(__file__).parent / "fixtures"


def _sample(i: int, image: Path, round_: int, modality: Modality, selected: bool | None, reason: str | None) -> Sample:
    strategy = list(PromptStrategy)[i % 3]
    return Sample(f"s{round_}-{i}", f"img{i % 2}", str(image), f"<b>Question {i}</b>?</script>", ("CT", "MR"), "CT",
                  TaskType.MODALITY if i % 2 else TaskType.ANATOMY, modality,
                  provenance=Provenance("generator", 2 * round_, round_, strategy, reward=float(i), selected=selected,
                                        rm_version=40 * round_, reason=reason))


def _run_dir(tmp_path: Path, n_per_round: int = 400) -> Path:
    image = tmp_path / "img.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(image)
    for k, modality in ((1, Modality.CT), (2, Modality.MR)):  # more candidates than the old 300-row cap
        write_samples(tmp_path / "data" / f"round_{k}" / "samples.jsonl", [
            _sample(i, image, k, modality, i % 4 == 0, None if i % 4 == 0 else ("below_tau" if i % 4 == 1 else "over_top_k"))
            for i in range(n_per_round)])
    with (tmp_path / "metrics.jsonl").open("w") as f:
        for step in range(3):
            f.write(json.dumps({"stage": "grpo", "step": step, "reward_mean": 0.1 * step, "kl": 0.01}) + "\n")
        for step in range(10, 810, 10):  # 80 reported SFT windows of 800 steps
            f.write(json.dumps({"stage": "solver_sft", "step": step, "loss": 5.0 / step}) + "\n")
        for k in (1, 2):
            f.write(json.dumps({"stage": "round", "step": k, "reward_mean": 4.0, "kept_reward_mean": 6.0}) + "\n")
    (tmp_path / "eval").mkdir()
    for name, acc, ct in (("0_untrained", 0.25, 0.5), ("1_after_sft", 0.625, 0.75), ("2_after_grpo", 0.5, 1 / 3)):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(
            {"accuracy": acc, "correct": int(8 * acc), "total": 8, "blind_bound": 0.375, "greedy_accuracy": 0.5,
             "by_modality": {"CT": ct, "MR": 0.5}}))
    (tmp_path / "config.yaml").write_text("run:\n  name: t\n")
    return tmp_path


def _sample_data(page: str) -> list[dict]:
    block = re.search(r'<script type="application/json" id="sample-data">(.*?)</script>', page, re.S)
    assert block is not None
    return json.loads(block.group(1))


def test_accuracy_is_a_percent_table_of_point_by_modality(tmp_path: Path) -> None:
    page = build_report(_run_dir(tmp_path, 4)).read_text()
    table = re.search(r"<table id='accuracy-table'>(.*?)</table>", page, re.S).group(1)
    assert "<th class='num'>CT</th><th class='num'>MR</th>" in table
    assert re.search(r"<th>after_sft</th><td class='num'><b>62.5%</b> \(5/8\)</td><td class='num up'>\+37.5</td>"
                     r"<td class='num'>75.0%</td><td class='num'>50.0%</td>", table)
    assert "<td class='num down'>-12.5</td><td class='num'>33.3%</td>" in table  # GRPO lowered it: said in red
    assert "{&quot;CT&quot;" not in page and '{"CT": 0.5' not in page  # no raw JSON dict any more


def test_every_reported_sft_step_is_one_point(tmp_path: Path) -> None:
    index = build_report(_run_dir(tmp_path, 4))
    page = index.read_text()
    points = re.findall(r"<tr><td class='num'>(\d+)</td><td class='num'>([\d.]+)</td></tr>",
                        re.search(r"<table id='sft-loss'>(.*?)</table>", page, re.S).group(1))
    assert [int(s) for s, _ in points] == list(range(10, 810, 10))
    assert "the 80 reported points" in page and (index.parent / "sft_loss.png").is_file()


def test_the_browser_holds_every_candidate_with_provenance_and_filters(tmp_path: Path) -> None:
    index = build_report(_run_dir(tmp_path))
    page = index.read_text()
    for key in ("round", "modality", "task", "strategy", "decision", "reason"):
        assert f"<select id='f-{key}' data-key='{key}'>" in page
    assert "<input id=\"f-text\" type=\"search\"" in page
    rows = _sample_data(page)
    assert len(rows) == 800  # all of them: the browser pages through them and says how many match
    first = next(r for r in rows if r["id"] == "s2-5")
    assert first == {**first, "round": 2, "modality": "MR", "task": "Modality Recognition", "strategy": "meta_cognitive",
                     "reward": 5.0, "decision": "rejected", "reason": "below_tau", "g": 4, "r": 80,
                     "question": "<b>Question 5</b>?</script>", "img": "thumbs/img1.jpg"}
    assert {r["reason"] for r in rows} == {"-", "below_tau", "over_top_k"}
    assert "<b>Question" not in page and "</script>\"" not in page  # model text never becomes markup
    assert (index.parent / "thumbs" / "img0.jpg").is_file()


def test_plots_only_for_what_was_logged_with_integer_axes(tmp_path: Path) -> None:
    index = build_report(_run_dir(tmp_path, 4))
    page = index.read_text()
    for png in ("grpo_reward.png", "grpo_kl.png", "round_reward.png", "accuracy.png", "sft_loss.png"):
        assert (index.parent / png).is_file() and png in page
    assert not (index.parent / "rm_loss.png").exists()  # nothing logged, nothing drawn
    assert "id='timeline'" not in page and not (index.parent / "timeline.png").exists()  # no timeline.jsonl
    assert "name: t" in page


def test_the_timeline_is_drawn_one_row_per_actor(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, 4)
    (run / "timeline.jsonl").write_text((FIXTURES / "timeline.jsonl").read_text())
    spans = read_timeline(run)
    assert len({s.actor for s in spans}) == 8 and busy_seconds(spans)["generate"] == 155.0  # overlaps count once
    page = build_report(run).read_text()
    assert "<h2 id='timeline'>Timeline</h2><img src='timeline.png'" in page
    assert "<tr><td>train_policy_grpo</td><td class='num'>60.0</td></tr>" in page
    assert (run / "report" / "timeline.png").stat().st_size > 10_000


def test_timeline_spans_are_written_and_read_back(tmp_path: Path) -> None:
    t0 = 1_000.0  # spans carry wall-clock seconds; the file holds seconds since the run started
    write_timeline(tmp_path, [Span("G learner", "train:generator_rft", t0 + 1.0, t0 + 2.5),
                              Span("driver", "select", t0, t0 + 0.5)], t0)
    spans = read_timeline(tmp_path)
    assert [(s.actor, s.kind) for s in spans] == [("driver", "select"), ("G learner", "train:generator_rft")]
    assert (spans[0].start, spans[1].end - spans[1].start) == (0.0, 1.5)
    (tmp_path / "timeline.jsonl").write_text('{"actor": "x"}\n')
    with pytest.raises(ValueError, match=r"timeline.jsonl:1: not a timeline span"):
        read_timeline(tmp_path)


def test_overlap_is_the_busy_share_of_the_other_kinds_time() -> None:
    spans = [Span("gen", "generate", 0, 4), Span("gen", "generate", 6, 8), Span("G", "train:generator_rft", 2, 10),
             Span("R", "train:reward_refresh", 9, 12)]
    # training ran 2-12 (10 s); generation covered 2-4 and 6-8 of it: 4 s
    assert overlap(spans, ("generate",), ("train:generator_rft", "train:reward_refresh")) == 0.4
    assert overlap(spans, ("generate",), ("evaluate",)) is None


def test_round_axes_show_whole_rounds_only() -> None:
    from medgr2_ray.eval.report_plots import line_figure, plt

    ticks = []
    for rounds in ([1], [1, 2, 3], list(range(1, 40))):
        fig = line_figure("t", {"x": (rounds, [1.0] * len(rounds))}, "round")
        ticks.append([float(t) for t in fig.axes[0].get_xticks()])
        plt.close(fig)
    assert ticks[0] == [1.0] and ticks[1] == [1.0, 2.0, 3.0]
    assert all(t == int(t) for row in ticks for t in row)  # never 1.2 rounds
