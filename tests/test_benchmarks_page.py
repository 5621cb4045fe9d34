"""benchmarks/README.md is generated from the committed results: it is exactly what benchmarks/collect.py
writes from benchmarks/results/*.json, so the page cannot drift from the numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _collect() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_collect", BENCHMARKS / "collect.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_is_what_collect_writes() -> None:
    page = _collect().render()
    assert (BENCHMARKS / "README.md").read_text() == page, "run `python benchmarks/collect.py` and commit README.md"


def test_every_benchmark_has_its_numbers_goals_limits_and_command() -> None:
    collect = _collect()
    page = collect.render()
    for bench in collect.BENCHES:
        result = json.loads((BENCHMARKS / "results" / f"{bench.name}.json").read_text())
        _, goals = bench.render(result)
        assert goals, f"{bench.name}: no goal on the page"
        start = page.index(f"## {bench.title}\n")
        body = page[start:page.find("\n## ", start + 1)]
        assert "What limits it:" in body and bench.command in body and "Rerun" in body
        for goal in goals:
            assert goal.line() in body and goal.measured in page.split("## At a glance")[1]


def test_a_changed_result_changes_the_page(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    collect = _collect()
    results = tmp_path / "results"
    results.mkdir()
    for path in (BENCHMARKS / "results").glob("*.json"):
        (results / path.name).write_text(path.read_text())
    learns = json.loads((results / "learns_on_cpu_learns.json").read_text())
    learns["learns"]["mean"] = 0.5
    (results / "learns_on_cpu_learns.json").write_text(json.dumps(learns))
    monkeypatch.setattr(collect, "RESULTS", results)
    page = collect.render()
    assert "mean 50.0%" in page and page != (BENCHMARKS / "README.md").read_text()
    kept = f"min {100 * learns['learns']['min']:.1f}%, +{100 * learns['learns']['gain_over_untrained']:.1f} points"
    assert "| the solver learns from template seeds | mean >= 65%" in page and f"mean 50.0%, {kept} | **not met** |" in page


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regoal_gives_the_committed_verdicts(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A page's goals are judged from its JSON by the script's current rules (`--regoal`), so a rule that
    changed without the page being rewritten fails here."""
    for script, pattern in (("async_vs_sync", "async_vs_sync"), ("orchestration_overhead", "orchestration_overhead*")):
        module = _script(script)
        monkeypatch.setattr(module.common, "RESULTS", tmp_path)
        pages = sorted(p.stem for p in (BENCHMARKS / "results").glob(f"{pattern}.json"))
        assert script in pages
        committed = {name: json.loads((BENCHMARKS / "results" / f"{name}.json").read_text()) for name in pages}
        for name, saved in committed.items():
            (tmp_path / f"{name}.json").write_text(json.dumps(saved))
        module.regoal()  # every page of the script (orchestration_overhead: one per completion length)
        for name, saved in committed.items():
            assert json.loads((tmp_path / f"{name}.json").read_text())["goals"] == saved["goals"], name
            assert (tmp_path / f"{name}.md").read_text() == (BENCHMARKS / "results" / f"{name}.md").read_text(), name


def test_the_cpu_bound_counts_every_process_beside_the_stages() -> None:
    """Two 150 ms stages and 50 ms of other processes' CPU per step on 2 cores: the step is at least
    (300 + 50) / 2 = 175 ms, 150 / 175 of the theoretical limit; with one core free of overhead it is 150."""
    bound = _script("async_vs_sync").cpu_bound
    lim = {"sync_step_s": 0.3, "async_step_s": 0.15}
    cpu = {"RolloutActor": 160.0, "RayTrainWorker": 170.0, "LearnerFeed": 30.0, "Ray: raylet": 20.0}
    got = bound(lim, cpu, 2)
    assert abs(got["other_cpu_s"] - 0.05) < 1e-9 and abs(got["work_step_s"] - 0.175) < 1e-9
    assert abs(got["work_share"] - 0.15 / 0.175) < 1e-9 and abs(got["loop_step_s"] - 0.19) < 1e-9
    assert bound(lim, {"RolloutActor": 150.0, "RayTrainWorker": 150.0}, 4)["work_share"] == 1.0
