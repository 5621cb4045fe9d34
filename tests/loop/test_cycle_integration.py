"""A short whole MedGR² cycle on CPU — the continuous flywheel, the solver's SFT and GRPO, evaluation,
the report — on real Ray, with real tiny models and the real seed pool: the run directory must hold
everything a person needs to judge the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgr2_ray.config import load_config
from medgr2_ray.data.store import read_samples

pytestmark = pytest.mark.slow

SHORT = [
    "cycle.strategies=[direct]", "cycle.samples_per_prompt=2", "cycle.max_new_tokens=48",
    "cycle.generator_bootstrap_steps=3", "cycle.rm_bootstrap_steps=3", "cycle.rm_answer_steps=2",
    "cycle.batch_size=4", "cycle.publish_every=2", "selection.tau=null",
    "solver.sft_steps=20", "solver.sft_batch_size=4", "solver.eval_per_modality=2",
    "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=8",
    "learner.num_cpus_per_rank=0.5", "generator_pool.num_cpus=0.5", "scorer_pool.num_cpus=0.5",
    "rollout_pool.num_cpus=0.5", "loop.checkpoint_every=1",
]


def test_every_stage_writes_its_part_of_the_run_dir(ray_cluster: None, tmp_path: Path, tiny_cache: Path) -> None:
    from medgr2_ray.loop.cycle import run_cycle

    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=it", f"data.cache_dir={tiny_cache}", *SHORT])
    stages: dict[str, int] = {}
    result = run_cycle(cfg, lambda stage, done, total: stages.__setitem__(stage, total), prefix="it-")
    run = tmp_path / "it"
    assert result.run_dir == run
    assert {"data + solver SFT", "GRPO"} <= set(stages)
    # data with provenance: every candidate (decided, with its versions) or its failure reason, the log
    stream = run / "data" / "stream"
    candidates = read_samples(stream / "samples.jsonl")
    failures = (stream / "failures.jsonl").read_text().splitlines() if (stream / "failures.jsonl").is_file() else []
    offers = [json.loads(line) for line in (stream / "offers.jsonl").read_text().splitlines()]
    assert offers and len(candidates) + len(failures) > 0
    assert sum(len(o["samples"]) for o in offers) == len(candidates)  # every candidate decided exactly once
    assert all(c.provenance.selected is not None and c.provenance.rm_version >= 0 for c in candidates)
    assert all(c.provenance.reason is None for c in candidates if c.provenance.selected)
    kept = read_samples(stream / "kept.jsonl") if (stream / "kept.jsonl").is_file() else []
    assert [s.sample_id for s in kept] == [c.sample_id for c in candidates if c.provenance.selected]
    assert len(read_samples(run / "data" / "solver_train.jsonl")) >= len(kept)
    # models, evaluations before/after each solver stage, metrics, timeline, report
    for name in ("generator", "reward_model", "solver_sft", "solver_grpo"):
        assert (run / "models" / name / "model.safetensors").is_file(), name
    assert set(result.evals) == {"untrained", "after_sft", "after_grpo"}
    for name in ("0_untrained", "1_after_sft", "2_after_grpo"):
        ev = json.loads((run / "eval" / f"{name}.json").read_text())
        assert ev["total"] > 0 and 0.0 <= ev["accuracy"] <= 1.0 and "greedy_accuracy" in ev
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"generator_sft", "reward_model", "data", "solver_sft", "grpo"} <= {r["stage"] for r in records}
    assert len([r for r in records if r["stage"] == "solver_sft"]) == 20  # every SFT step of the solver
    spans = [json.loads(line) for line in (run / "timeline.jsonl").read_text().splitlines()]
    assert {"train:generator_bootstrap", "train:reward_bootstrap", "generate", "score", "train:solver_sft",
            "train:grpo", "evaluate"} <= {s["kind"] for s in spans}
    assert all(0.0 <= s["start"] <= s["end"] for s in spans)
    assert list(json.loads((run / "stages.json").read_text())) == ["start actors", "data + solver SFT",
                                                                     "GRPO + evaluation", "report"]
    accounting = json.loads((run / "grpo_accounting.json").read_text())
    assert len(accounting["trained"]) == 2 * 2
    assert (run / "config.yaml").is_file() and (run / "tb").is_dir()
    page = (run / "report" / "index.html").read_text()
    assert "accuracy" in page and (run / "report" / "timeline.png").is_file()
