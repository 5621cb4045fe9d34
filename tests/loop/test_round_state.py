"""The file rules that make the co-evolution rounds resumable (no Ray, no models: real files only).

A round counts as complete only through an unbroken DONE.json chain from round 0; data changed after a
round completed is an error naming the file; a config that changes what rounds produce is refused with
the differing field named, while fields that do not (the number of rounds, CPUs per rank) are not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medgr2_ray.config import load_config
from medgr2_ray.loop.round_state import (DONE, IncompatibleRunError, check_resumable, completed_rounds,
                                         final_reward_dir, prune_checkpoints, round_checkpoint, round_dir,
                                         rounds_fingerprint, write_done, write_final)

POOL = ["img-a", "img-b", "img-c"]
TRAIN = ["img-a", "img-b"]


def _fingerprint(*overrides: str) -> dict:
    return rounds_fingerprint(load_config(None, list(overrides)), POOL, TRAIN)


def _complete(run_dir: Path, rounds: int) -> list:
    """Rounds 0..rounds-1 written the way the cycle writes them: data files first, DONE last."""
    records, previous = [], None
    for k in range(rounds):
        (round_dir(run_dir, k)).mkdir(parents=True, exist_ok=True)
        (round_dir(run_dir, k) / "samples.jsonl").write_text(f"round {k}\n")
        records.append(write_done(run_dir, k, 10 * k, 5 * k, k, _fingerprint(), previous))
        previous = records[-1].digest
    return records


def test_fingerprint_names_the_fields_that_shape_rounds_and_ignores_the_rest(tmp_path: Path) -> None:
    records = _complete(tmp_path, 2)
    # More rounds or more CPUs per rank: the completed rounds are still what this config would make.
    check_resumable(records, _fingerprint("cycle.rounds=5", "learner.num_cpus_per_rank=2"), 5)
    with pytest.raises(IncompatibleRunError,
                       match=r"cycle\.temperature: the completed rounds used 0\.9, this config has 0\.5"):
        check_resumable(records, _fingerprint("cycle.temperature=0.5"), 5)
    with pytest.raises(IncompatibleRunError) as both:
        check_resumable(records, _fingerprint("selection.top_k=3", "generator.tiny.hidden_size=32"), 5)
    assert "selection.top_k: " in str(both.value) and "generator.tiny.hidden_size: " in str(both.value)
    moved_pool = rounds_fingerprint(load_config(None, []), [*POOL, "img-d"], TRAIN)
    with pytest.raises(IncompatibleRunError, match=r"data\.pool_images"):
        check_resumable(records, moved_pool, 5)
    with pytest.raises(IncompatibleRunError, match=r"1 rounds are complete but cycle\.rounds=0"):
        check_resumable(records, _fingerprint(), 0)


def test_only_an_unbroken_chain_from_round_0_counts(tmp_path: Path) -> None:
    records = _complete(tmp_path, 3)
    assert [r.round for r in completed_rounds(tmp_path)] == [0, 1, 2]
    assert completed_rounds(tmp_path) == records
    # A crash before round 1's DONE: rounds after it do not count even though their markers exist.
    (round_dir(tmp_path, 1) / DONE).unlink()
    assert [r.round for r in completed_rounds(tmp_path)] == [0]
    # A marker left by an earlier run (it does not name this chain's round 0 as its predecessor).
    write_done(tmp_path, 1, 10, 5, 1, _fingerprint(), previous=None)
    assert [r.round for r in completed_rounds(tmp_path)] == [0]
    # A torn or foreign DONE.json is not trusted: the round is redone.
    (round_dir(tmp_path, 0) / DONE).write_text("{not json")
    assert completed_rounds(tmp_path) == []


def test_data_changed_after_completion_is_an_error_naming_the_file(tmp_path: Path) -> None:
    _complete(tmp_path, 2)
    (round_dir(tmp_path, 1) / "samples.jsonl").write_text("round 1\nan appended line\n")
    with pytest.raises(IncompatibleRunError, match=r"round_1/samples\.jsonl: changed or missing after round 1"):
        completed_rounds(tmp_path)


def test_pruning_keeps_the_last_two_rounds_and_drops_stale_ones(tmp_path: Path) -> None:
    for k in range(5):
        (round_checkpoint(tmp_path, k) / "generator").mkdir(parents=True)
    removed = prune_checkpoints(tmp_path, 2)  # round 3 and 4 are leftovers of an earlier, longer run
    assert sorted(p.name for p in removed) == ["round_0", "round_3", "round_4"]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "rounds").iterdir()) == ["round_1", "round_2"]


def test_final_reward_dir_belongs_to_one_chain_end(tmp_path: Path) -> None:
    records = _complete(tmp_path, 2)
    reward = tmp_path / "models" / "reward_model"
    reward.mkdir(parents=True)
    (reward / "model.safetensors").write_bytes(b"x")
    write_final(tmp_path, records[-1], reward)
    assert final_reward_dir(tmp_path, records[-1]) == reward
    assert final_reward_dir(tmp_path, records[0]) is None  # written after round 1, not round 0
