"""`medgr2 run --resume` continues the generator / reward-model co-evolution rounds, on real Ray with real
tiny models and the real seed pool.

Three runs of the rounds mode (`loop.cycle.run_data_only` with `cycle.mode=rounds`: the flywheel's actors,
G and R hosted by Ray Train, without the solver) share the work of every test here (module fixtures):
- "resumed": rounds=1, then `resume=True` with rounds=2;
- "straight": rounds=2 in one go, then its round 2 redone after its DONE.json was deleted (a crash after
  the round's files and checkpoints were written but before it was marked complete).
Generation is deterministic given the seeds (the generator engine seeds a torch.Generator per call from
the run's seed and the call's first request id; batches, grading and selection are seeded; the learners'
checkpoints restore optimizer and RNG state; one torch thread), so a resumed round must equal the
uninterrupted one byte for byte.
The generator is bootstrapped for 200 steps so that rounds 1 and 2 both keep samples (a 3-step
generator writes nothing parseable, which would make the "no duplicates" checks vacuous).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from medgr2_ray.checkpoint import load_tensors
from medgr2_ray.config import Config, load_config
from medgr2_ray.data.store import read_samples
from medgr2_ray.loop.round_state import DONE, IncompatibleRunError, completed_rounds, round_checkpoint, round_dir
from medgr2_ray.types import Sample

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

ROUNDS = [
    "cycle.tasks=[Modality Recognition]", "cycle.strategies=[direct]", "cycle.images_per_round=6",
    "cycle.samples_per_prompt=2", "cycle.temperature=0.3", "cycle.max_new_tokens=120", "cycle.batch_size=8",
    "cycle.generator_bootstrap_steps=200", "cycle.rm_bootstrap_steps=3", "cycle.rm_answer_steps=3", "cycle.generator_rft_steps=1",
    "cycle.rm_refresh_steps=2", "learner.lr=5e-3", "cycle.mode=rounds", "learner.num_cpus_per_rank=0.5",
    "generator_pool.num_cpus=0.5", "scorer_pool.num_cpus=0.5", "learner.checkpoint_every=0",
]


def _config(root: Path, name: str, cache: Path, *extra: str) -> Config:
    return load_config(None, [f"run.root={root}", f"run.name={name}", f"data.cache_dir={cache}", *ROUNDS, *extra])


@dataclass(frozen=True)
class RoundsRun:
    """What one `run_rounds` call returned, and the progress stages it reported."""

    kept: list[Sample]
    reward_dir: Path
    stages: list[str]


def _run_rounds(cfg: Config, resume: bool) -> RoundsRun:
    from medgr2_ray.loop.cycle import run_data_only

    stages: list[str] = []
    run = run_data_only(cfg, lambda stage, done, total: stages.append(stage), resume=resume)
    return RoundsRun(run.kept, run.reward_dir, list(dict.fromkeys(stages)))


def _files(run_dir: Path, rounds: range) -> dict[str, tuple[bytes, int]]:
    """Every file of these rounds' data directories: bytes and modification time."""
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for k in rounds for p in sorted(round_dir(run_dir, k).iterdir())}


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _as_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    """Tensors from an actor's numpy arrays (copied: arrays from the object store are read-only)."""
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


@dataclass(frozen=True)
class Resumed:
    run_dir: Path
    first: RoundsRun  # rounds=1
    second: RoundsRun  # resume, rounds=2
    before: dict[str, tuple[bytes, int]]  # round 0/1 files after the first call


@pytest.fixture(scope="module")
def resumed(ray_cluster: None, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    root = tmp_path_factory.mktemp("rounds-resume")
    first = _run_rounds(_config(root, "resumed", tiny_cache, "cycle.rounds=1"), resume=False)
    before = _files(root / "resumed", range(2))
    second = _run_rounds(_config(root, "resumed", tiny_cache, "cycle.rounds=2"), resume=True)
    return Resumed(root / "resumed", first, second, before)


@dataclass(frozen=True)
class Straight:
    run_dir: Path
    run: RoundsRun
    round_2: dict[str, tuple[bytes, int]]  # round 2's files as the uninterrupted run wrote them
    round_2_samples: list[Sample]
    checkpoint_2: dict[str, dict[str, torch.Tensor]]  # G's and R's weights after round 2


@pytest.fixture(scope="module")
def straight(ray_cluster: None, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Straight:
    root = tmp_path_factory.mktemp("rounds-straight")
    run = _run_rounds(_config(root, "straight", tiny_cache, "cycle.rounds=2"), resume=False)
    where = round_checkpoint(root / "straight", 2)
    weights = {name: load_tensors(where / name / "model.safetensors") for name in ("generator", "reward_model")}
    samples = read_samples(round_dir(root / "straight", 2) / "samples.jsonl")
    return Straight(root / "straight", run, _files(root / "straight", range(2, 3)), samples, weights)


def test_resume_adds_round_2_and_leaves_finished_rounds_untouched(resumed: Resumed) -> None:
    run = resumed.run_dir
    assert _files(run, range(2)) == resumed.before  # same bytes, same modification times
    assert [r.round for r in completed_rounds(run)] == [0, 1, 2]
    assert not any(s.startswith(("round 0:", "round 1:")) for s in resumed.second.stages)  # nothing redone
    round_1, round_2 = (read_samples(round_dir(run, k) / "kept.jsonl") for k in (1, 2))
    assert round_1 and round_2, "both rounds must keep samples, or the union checks below prove nothing"
    assert resumed.first.kept == round_1
    assert resumed.second.kept == round_1 + round_2  # the union, in the order the rounds kept them
    ids = [s.sample_id for s in resumed.second.kept]
    assert len(ids) == len(set(ids))
    assert all(s.provenance.round == 2 for s in round_2) and all(s.provenance.round == 1 for s in round_1)


def test_resumed_round_equals_the_uninterrupted_one(resumed: Resumed, straight: Straight) -> None:
    for name in ("samples.jsonl", "kept.jsonl", "failures.jsonl", "summary.json"):
        assert (round_dir(resumed.run_dir, 2) / name).read_bytes() == straight.round_2[f"data/round_2/{name}"][0], name
    assert resumed.second.kept == straight.run.kept
    for name in ("generator", "reward_model"):
        after = load_tensors(round_checkpoint(resumed.run_dir, 2) / name / "model.safetensors")
        assert _tensors_equal(after, straight.checkpoint_2[name]), name


def test_restore_reloads_exactly_the_saved_weights_and_kept_samples(resumed: Resumed, tiny_cache: Path) -> None:
    from medgr2_ray.eval.rundata import prepare_data
    from medgr2_ray.loop.cycle import build_system, with_absolute_paths
    from medgr2_ray.loop.flywheel import Flywheel
    from medgr2_ray.loop.rounds import restore

    cfg = with_absolute_paths(_config(resumed.run_dir.parent, "resumed", tiny_cache, "cycle.rounds=2"))
    data = prepare_data(cfg)
    records = completed_rounds(resumed.run_dir)[:2]  # back to the end of round 1 (its checkpoint is kept)
    saved = {name: load_tensors(round_checkpoint(resumed.run_dir, 1) / name / "model.safetensors")
             for name in ("generator", "reward_model")}
    system = build_system(cfg, data, resumed.run_dir, resume_rounds=1, prefix="restore-")
    try:
        wheel = Flywheel(cfg, system, data, None, lambda *_: None)
        fresh_g = _as_tensors(system.g_learner.weights_numpy())
        assert not _tensors_equal(_only(fresh_g, saved["generator"]), saved["generator"])  # so equality means something
        with pytest.raises(IncompatibleRunError, match=r"round_0/generator: no checkpoint written by round 0"):
            restore(wheel, resumed.run_dir, records[0])  # round 0's checkpoints were pruned once round 2 completed
        restore(wheel, resumed.run_dir, records[-1])
        g = _as_tensors(system.g_learner.weights_numpy())
        r = _as_tensors(system.r_learner.weights_numpy())
        assert _tensors_equal(_only(g, saved["generator"]), saved["generator"])
        assert _tensors_equal(_only(r, saved["reward_model"]), saved["reward_model"])
        assert ray.get(system.store.kept_samples.remote()) == resumed.first.kept
        assert wheel.kept_total == len(resumed.first.kept)
    finally:
        system.shutdown()


def _only(tensors: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published weights that a checkpoint also holds (it keeps trainable parameters only)."""
    return {k: tensors[k] for k in like}


def test_every_round_complete_goes_straight_on(resumed: Resumed, tiny_cache: Path) -> None:
    before = _files(resumed.run_dir, range(3))
    again = _run_rounds(_config(resumed.run_dir.parent, "resumed", tiny_cache, "cycle.rounds=2"), resume=True)
    assert again.stages == ["rounds: resumed after round"]  # nothing generated, nothing trained
    assert again.kept == resumed.second.kept and again.reward_dir == resumed.second.reward_dir
    assert _files(resumed.run_dir, range(3)) == before


def test_incompatible_config_is_refused_naming_the_field(resumed: Resumed, tiny_cache: Path) -> None:
    before = _files(resumed.run_dir, range(3))
    root = resumed.run_dir.parent
    with pytest.raises(IncompatibleRunError,
                       match=r"cycle\.temperature: the completed rounds used 0\.3, this config has 0\.7"):
        _run_rounds(_config(root, "resumed", tiny_cache, "cycle.rounds=3", "cycle.temperature=0.7"), resume=True)
    with pytest.raises(IncompatibleRunError, match=r"run\.seed: the completed rounds used 0, this config has 1"):
        _run_rounds(_config(root, "resumed", tiny_cache, "cycle.rounds=3", "run.seed=1"), resume=True)
    with pytest.raises(IncompatibleRunError, match=r"2 rounds are complete but cycle\.rounds=1"):
        _run_rounds(_config(root, "resumed", tiny_cache, "cycle.rounds=1"), resume=True)
    assert _files(resumed.run_dir, range(3)) == before


def test_a_round_without_done_is_redone_once_not_appended(straight: Straight, tiny_cache: Path) -> None:
    run = straight.run_dir
    (round_dir(run, 2) / DONE).unlink()
    # What a crash could leave behind: a half-written extra line, and a file the redo does not write.
    with (round_dir(run, 2) / "samples.jsonl").open("a") as f:
        f.write('{"sample_id": "half-writ')
    (round_dir(run, 2) / "stray.tmp").write_text("partial")
    redone = _run_rounds(_config(run.parent, "straight", tiny_cache, "cycle.rounds=2"), resume=True)
    assert "round 0: bootstrap G and R" not in redone.stages and "round 1: generate + score" not in redone.stages
    assert sorted(p.name for p in round_dir(run, 2).iterdir()) == sorted(Path(k).name for k in straight.round_2)
    samples = read_samples(round_dir(run, 2) / "samples.jsonl")
    assert samples and samples == straight.round_2_samples  # not doubled (nor appended to), and the same samples
    assert redone.kept == straight.run.kept and len(redone.kept) == len({s.sample_id for s in redone.kept})
    assert [r.round for r in completed_rounds(run)] == [0, 1, 2]


def test_fresh_start_without_resume_starts_the_rounds_over(straight: Straight, tiny_cache: Path,
                                                            tmp_path: Path) -> None:
    """Without --resume an existing run directory starts over from round 0 (what `medgr2 run` did before
    resume existed). Shown with rounds=0 (round 0 only) on a copy of a finished run, to keep it short:
    round 0 is rewritten, and the old rounds 1-2 stay on disk but no longer count as complete, so a
    later --resume cannot mix them into the new run."""
    run = tmp_path / "straight"
    shutil.copytree(straight.run_dir, run)
    old_seeds_mtime = (round_dir(run, 0) / "seeds.jsonl").stat().st_mtime_ns
    again = _run_rounds(_config(tmp_path, "straight", tiny_cache, "cycle.rounds=0"), resume=False)
    assert "round 0: bootstrap G and R" in again.stages and again.kept == []
    assert (round_dir(run, 0) / "seeds.jsonl").stat().st_mtime_ns != old_seeds_mtime
    assert [r.round for r in completed_rounds(run)] == [0]
    assert (round_dir(run, 2) / "samples.jsonl").is_file() and not (round_dir(run, 2) / DONE).exists()
