"""`medgr2 run --resume` continues a continuous run that was killed, on real Ray with real tiny models and
the real seed pool: the run is stopped part way through P's SFT (an exception from its progress callback,
after P's first checkpoints and the first kept samples), resumed, and finishes as a fresh run does. The
ids prove that no kept sample was lost or kept twice, that no request the store accepted was generated
again, and that P took each SFT step once after its checkpoint (the steps the checkpoint holds are not
redone; the ones after it are)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medgr2_ray.config import load_config
from medgr2_ray.data.store import read_samples

pytestmark = pytest.mark.slow
PREFIX = "resume-"
SFT_STEPS = 40
SHORT = [
    "cycle.strategies=[direct]", "cycle.samples_per_prompt=2", "cycle.max_new_tokens=48",
    "cycle.generator_bootstrap_steps=3", "cycle.rm_bootstrap_steps=3", "cycle.rm_answer_steps=2",
    "cycle.batch_size=4", "cycle.publish_every=2", "selection.tau=null",
    f"solver.sft_steps={SFT_STEPS}", "solver.sft_warmup_share=0.25", "solver.sft_batch_size=4",
    "solver.eval_per_modality=2", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2",
    "grpo.max_new_tokens=8", "learner.checkpoint_every=4", "learner.num_cpus_per_rank=0.5",
    "generator_pool.num_cpus=0.5", "scorer_pool.num_cpus=0.5", "rollout_pool.num_cpus=0.5",
]


class Killed(RuntimeError):
    """Stands for the run being killed."""


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_continuous_run_resumes_without_losing_or_doubling_anything(
        ray_cluster: None, tmp_path: Path, tiny_cache: Path) -> None:
    from medgr2_ray.loop.cycle import run_cycle

    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=cont", f"data.cache_dir={tiny_cache}", *SHORT])
    run = tmp_path / "cont"
    offers_log = run / "data" / "stream" / "offers.jsonl"
    with pytest.raises(ValueError, match="holds no continuous-mode run"):  # nothing to resume yet: one clear line
        run_cycle(cfg, lambda *_: None, resume=True, prefix=PREFIX)

    def kill(stage: str, done: int, total: int) -> None:
        if stage == "data + solver SFT" and done >= 10 and offers_log.is_file() and offers_log.read_text():
            raise Killed(f"killed after {done} SFT steps")

    with pytest.raises(Killed):
        run_cycle(cfg, kill, prefix=PREFIX)
    kept_before = [s.sample_id for s in read_samples(run / "data" / "stream" / "kept.jsonl")]
    accepted_before = {r for line in offers_log.read_text().splitlines() for r in json.loads(line)["request_ids"]}
    feed = json.loads((run / "ray_train" / f"{PREFIX}PolicyLearner-feed.json").read_text())
    sft_in_checkpoint = feed["recipe_steps"]["solver_sft"]
    assert feed["checkpoint"] is not None and 4 <= sft_in_checkpoint < SFT_STEPS and accepted_before
    killed_sft = [r for r in _records(run) if r["stage"] == "solver_sft"]
    # The driver logs a step once it reads its result, which may lag the learner: the checkpoint can hold
    # more steps than were logged (then nothing needs setting aside) or fewer (then the records past it must).
    assert sorted(r["step"] for r in killed_sft) == list(range(len(killed_sft)))

    result = run_cycle(cfg, lambda *_: None, resume=True, prefix=PREFIX)

    assert {"untrained", "after_sft", "after_grpo"} <= set(result.evals) and result.report.is_file()
    # P's SFT: the steps its checkpoint held are not taken again; every later one exactly once.
    records = _records(run)
    after = [r["step"] for r in records if r["stage"] == "solver_sft" and r["time"] > max(k["time"] for k in killed_sft)]
    assert sorted(after) == list(range(sft_in_checkpoint, SFT_STEPS))
    # The log holds each learner step once: the killed run's records of the steps redone after its
    # checkpoint were set aside (metrics.redone.jsonl), not kept beside the redone ones.
    for stage in ("generator_sft", "reward_model", "solver_sft"):
        items = [r["item"] for r in records if r["stage"] == stage]
        assert len(items) == len(set(items)), f"{stage}: a step logged twice"
    # Every step from the checkpoint on is logged once; below it, what the killed run had logged (a step it
    # trained inside its checkpoint but had not yet read is trained, not logged: its report died with it).
    sft = [r["step"] for r in records if r["stage"] == "solver_sft"]
    logged_before = {r["step"] for r in killed_sft if r["step"] < sft_in_checkpoint}
    assert sorted(sft) == sorted(logged_before | set(range(sft_in_checkpoint, SFT_STEPS)))
    redone = run / "metrics.redone.jsonl"
    aside = [json.loads(line) for line in redone.read_text().splitlines()] if redone.is_file() else []
    assert sorted(r["step"] for r in aside if r["stage"] == "solver_sft") == sorted(
        r["step"] for r in killed_sft if r["step"] >= sft_in_checkpoint)
    # Kept samples: those kept before the kill come back first, in order; none is kept twice.
    kept = [s.sample_id for s in read_samples(run / "data" / "stream" / "kept.jsonl")]
    assert kept[:len(kept_before)] == kept_before and len(kept) == len(set(kept)) == result.kept
    offered = Counter(r for line in offers_log.read_text().splitlines() for r in json.loads(line)["request_ids"])
    assert max(offered.values()) == 1, "the store accepted a request twice"
    # The resumed stream generated none of the requests the store had accepted before the kill.
    assert not accepted_before & set(result.data_ledger.issued)
    assert set(offered) == accepted_before | set(result.data_ledger.answered)
