"""RolloutBuffer: bounded, versioned, staleness-filtered with counted drops, duplicates refused, persisted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray

from medgr2_ray.actors.buffer import BufferFull, RolloutBuffer, ShortBatch
from medgr2_ray.actors.persist import PersistError, load_messages, save_messages

from medgr2_ray.types import ScoredGroup

GroupFactory = Callable[..., ScoredGroup]


def test_take_drops_exactly_the_stale_groups_and_counts_them(group_factory: GroupFactory) -> None:
    buf = RolloutBuffer(capacity=10)
    buf.put([group_factory(f"g{i}", version=v) for i, v in enumerate([0, 1, 2, 3, 3])])
    # learner at version 3 with max_staleness 1: versions 0 and 1 are too old (staleness 3 and 2)
    result = buf.take(n=2, learner_version=3, max_staleness=1)
    assert result.dropped_stale_ids == ("g0", "g1")
    assert result.group_ids == ("g2", "g3")
    assert all(3 - g.weight_version <= 1 for g in result.batch.groups)
    assert result.batch.learner_version == 3
    stats = buf.stats()
    assert (stats.depth, stats.taken, stats.dropped_stale, stats.accepted) == (1, 2, 2, 5)
    assert stats.versions == (3,)


def test_staleness_zero_keeps_only_the_current_version(group_factory: GroupFactory) -> None:
    buf = RolloutBuffer(capacity=4)
    buf.put([group_factory("a", 4), group_factory("b", 5)])
    result = buf.take(n=4, learner_version=5, max_staleness=0)
    assert result.group_ids == ("b",) and result.dropped_stale_ids == ("a",)


def test_batch_is_ordered_by_group_id_not_arrival(group_factory: GroupFactory) -> None:
    buf = RolloutBuffer(capacity=4)
    buf.put([group_factory("r03", 0)])
    buf.put([group_factory("r01", 0), group_factory("r02", 0)])
    assert buf.take(3, 0, 0).group_ids == ("r01", "r02", "r03")


def test_an_exact_take_short_of_fresh_groups_takes_nothing(group_factory: GroupFactory) -> None:
    buf = RolloutBuffer(capacity=4)
    buf.put([group_factory("a", 0), group_factory("b", 1), group_factory("c", 1)])
    with pytest.raises(ShortBatch, match="2 fresh groups, 3"):
        buf.take(3, 1, 0, exact=True)  # "a" is stale at version 1
    assert buf.stats().depth == 3 and buf.stats().dropped_stale == 0  # nothing taken, nothing dropped
    assert buf.take(2, 1, 0, exact=True).group_ids == ("b", "c")


def test_capacity_is_a_hard_bound_and_nothing_is_half_accepted(group_factory: GroupFactory) -> None:
    buf = RolloutBuffer(capacity=3)
    buf.put([group_factory("a", 0), group_factory("b", 0)])
    with pytest.raises(BufferFull, match="2/3"):
        buf.put([group_factory("c", 0), group_factory("d", 0)])
    assert buf.stats().depth == 2  # the refused put left nothing behind
    with pytest.raises(ValueError, match="capacity"):
        RolloutBuffer(capacity=0)


def test_a_group_id_is_accepted_once_per_run(group_factory: GroupFactory) -> None:
    buf = RolloutBuffer(capacity=4)
    buf.put([group_factory("a", 0)])
    buf.take(1, 0, 0)
    receipt = buf.put([group_factory("a", 1), group_factory("b", 1)])  # "a" was trained already
    assert receipt.duplicate_ids == ("a",) and receipt.accepted_versions == (1,)
    assert buf.stats().duplicates == 1


def test_save_load_round_trip_keeps_arrays_versions_and_counters(
    tmp_path: Path, group_factory: GroupFactory
) -> None:
    buf = RolloutBuffer(capacity=5)
    groups = [group_factory(f"g{i}", version=i) for i in range(4)]
    buf.put(groups)
    buf.take(1, learner_version=3, max_staleness=2)  # drops g0, takes g1
    buf.save(str(tmp_path / "buffer"))
    again = RolloutBuffer(capacity=5)
    assert again.load(str(tmp_path / "buffer")) == buf.stats()
    restored = again.take(5, learner_version=3, max_staleness=2).batch.groups
    assert [g.group_id for g in restored] == ["g2", "g3"]
    for got, want in zip(restored, groups[2:]):
        np.testing.assert_array_equal(got.request.images[0], want.request.images[0])
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert got.request.sample == want.request.sample
        assert got.rollouts[1].completion_token_ids == want.rollouts[1].completion_token_ids
        np.testing.assert_array_equal(got.rollouts[1].logprobs, want.rollouts[1].logprobs)
    assert again.put([group_factory("g1", 3)]).duplicate_ids == ("g1",)  # seen ids survive resume


def test_persisted_state_never_names_a_foreign_type(tmp_path: Path) -> None:
    (tmp_path / "evil.json").write_text('{"__type__": "os.system", "fields": {}}')
    save_messages(tmp_path / "ok", {"x": 1})
    (tmp_path / "ok.safetensors").rename(tmp_path / "evil.safetensors")
    with pytest.raises(PersistError, match="unknown message type 'os.system'"):
        load_messages(tmp_path / "evil")
    with pytest.raises(PersistError, match="missing"):
        load_messages(tmp_path / "nothing")


def test_buffer_as_a_named_ray_actor(ray_cluster: None, group_factory: GroupFactory) -> None:
    actor = ray.remote(RolloutBuffer).options(name="RolloutBuffer-test").remote(4)
    receipt = ray.get(actor.put.remote([group_factory("x", 2), group_factory("y", 2)]))
    assert receipt.accepted_versions == (2, 2) and receipt.depth == 2
    result = ray.get(actor.take.remote(2, 2, 0))
    assert result.group_ids == ("x", "y")
    np.testing.assert_array_equal(result.batch.groups[0].rewards, group_factory("x", 2).rewards)
    ray.kill(actor)


def test_a_take_queued_after_puts_runs_once_they_brought_their_groups(ray_cluster: None,
                                                                     group_factory: GroupFactory) -> None:
    """The controller's take ahead: the take is submitted before the puts' groups exist (each put waits
    on a slow task), and Ray runs it only after both puts, so it gets all their groups."""

    @ray.remote
    def later(groups: list, seconds: float) -> list:
        import time

        time.sleep(seconds)
        return groups

    actor = ray.remote(RolloutBuffer).options(name="RolloutBuffer-ahead", allow_out_of_order_execution=True).remote(8)
    puts = [actor.put.remote(later.remote([group_factory(f"g{i}", 0)], 1.0 - 0.5 * i)) for i in range(2)]
    take = actor.take.remote(2, 0, 0, *puts, exact=True)
    assert ray.get(take).group_ids == ("g0", "g1")
    short = actor.take.remote(1, 0, 0, actor.put.remote(later.remote([group_factory("g0", 0)], 0.1)), exact=True)
    with pytest.raises(ray.exceptions.RayTaskError, match="ShortBatch"):  # the duplicate was refused
        ray.get(short)
    ray.kill(actor)
