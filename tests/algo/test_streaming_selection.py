"""Streaming selection (the flywheel's): each check by hand (ranking window, quotas on a sliding window,
near-duplicates against everything kept, the random ablation, the contamination guard), the
accounting invariant, agreement with the batch rule where they must agree, and restore == uninterrupted."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medgr2_ray.algo.contamination import ContaminationGuard
from medgr2_ray.algo.selection import STREAM_REASONS, StreamingSelector, question_similarity, select_samples
from medgr2_ray.config import SelectionConfig
from medgr2_ray.types import Modality, Provenance, Sample, TaskType

A = (Modality.CT, TaskType.DIAGNOSIS)
B = (Modality.MR, TaskType.DIAGNOSIS)


def _s(sid: str, reward: float | None = 5.0, image: str | None = None, q: str | None = None,
       bucket: tuple[Modality, TaskType] = A) -> Sample:
    image = image or f"img-{sid}"
    return Sample(sample_id=sid, image_id=image, image_path=f"{image}.png", question=q or f"Question about {sid}?",
                  options=("a", "b"), answer="a", task_type=bucket[1], modality=bucket[0],
                  provenance=Provenance(producer="generator", reward=reward))


def _kept(selector: StreamingSelector, samples: list[Sample], chunk: int = 1) -> list[bool]:
    out = []
    for i in range(0, len(samples), chunk):
        out += [d.kept for d in selector.offer(samples[i:i + chunk])]
    return out


# ---------------------------------------------------------------------------------------------- by hand
def test_ranking_window_keeps_the_best_fraction_of_the_last_window() -> None:
    # window 4, keep_fraction 0.5: keep if rank <= ceil(0.5 * n) among the last n <= 4 scored rewards.
    #  c1 5 [5]        rank 1 of 1, cut 1 keep    c5 1 [3,7,6,1]  rank 4, cut 2 drop
    #  c2 3 [5,3]      rank 2, cut 1      drop    c6 8 [7,6,1,8]  rank 1        keep
    #  c3 7 [5,3,7]    rank 1, cut 2      keep    c7 6 [6,1,8,6]  rank 3: 8 and c4's 6 (same reward,
    #  c4 6 [5,3,7,6]  rank 2, cut 2      keep                    smaller id) rank before it: drop
    cfg = SelectionConfig(window=4, keep_fraction=0.5, balance=False)
    samples = [_s(f"c{i + 1}", r) for i, r in enumerate([5, 3, 7, 6, 1, 8, 6])]
    decisions = StreamingSelector(cfg, seed=0).offer(samples)
    assert [d.kept for d in decisions] == [True, False, True, True, False, True, False]
    assert {d.reason for d in decisions if not d.kept} == {"below_rank"}
    assert "ranks 3 of the last 4" in decisions[-1].detail


def test_below_tau_candidates_still_fill_the_ranking_window() -> None:
    # window 3, keep the best third, tau 2. d2 and d3 are below tau but are scored candidates, so d4 (5)
    # ranks 1 of [0, 1, 5]: kept (were they left out, it would rank 2 of [9, 5] and be dropped).
    cfg = SelectionConfig(window=3, keep_fraction=1 / 3, tau=2.0, balance=False)
    samples = [_s("d1", 9.0), _s("d2", 0.0), _s("d3", 1.0), _s("d4", 5.0), _s("d5", 4.0)]
    decisions = StreamingSelector(cfg, seed=0).offer(samples)
    assert [(d.kept, d.reason) for d in decisions] == [
        (True, None), (False, "below_tau"), (False, "below_tau"), (True, None), (False, "below_rank")]


# bucket A's and B's candidates, the decisions of quota_slack=1.0 over a window of 8 decisions:
#   a1-a3: A alone, cap = K + 1: kept. b1: |A|=2, K=3, cap ceil(4/2)=2, k_B=0: kept.
#   a4: K=4, cap 3, k_A=3: dropped. b2: k_B=1 <= 2: kept. a5: K=5, cap 3, k_A=3: dropped. b3: kept.
#   a6-a9: K=6, cap ceil(7/2)=4, k_A=3: kept (a1, a2, a3, b1 slide out one by one).
#   a10-a13: k_A=4 = cap (B's kept samples are still in the window): dropped.
#   a14: B's last entry (b3) has left the window: A is alone again, cap = K + 1: kept.
QUOTA_ORDER = ["a1", "a2", "a3", "b1", "a4", "b2", "a5", "b3"] + [f"a{i}" for i in range(6, 15)]
QUOTA_KEPT = [True, True, True, True, False, True, False, True, True, True, True, True, False, False, False, False,
              True]


def _quota_samples(reward: float | None = 5.0) -> list[Sample]:
    return [_s(sid, reward, bucket=A if sid[0] == "a" else B) for sid in QUOTA_ORDER]


def test_quotas_cap_a_bucket_at_its_share_of_the_window_and_never_starve_one_alone() -> None:
    selector = StreamingSelector(SelectionConfig(window=8, quota_slack=1.0), seed=0)
    decisions = selector.offer(_quota_samples())
    assert [d.kept for d in decisions] == QUOTA_KEPT
    assert {d.reason for d in decisions if not d.kept} == {"over_quota"}
    assert "holds 3 of the 4 kept among the last 4 decisions; its cap with 2 active buckets is 3" in decisions[4].detail
    assert selector.counts()["over_quota"] == 6 and selector.kept_count == 11


def test_a_bucket_alone_is_never_limited_and_balance_off_keeps_everything() -> None:
    alone = StreamingSelector(SelectionConfig(window=4, quota_slack=1.0), seed=0)
    assert all(_kept(alone, [_s(f"x{i}") for i in range(30)]))
    off = StreamingSelector(SelectionConfig(window=8, quota_slack=1.0, balance=False), seed=0)
    assert all(_kept(off, _quota_samples()))


def test_slack_loosens_the_cap() -> None:
    # slack 2 with two buckets: cap = ceil(2 (K + 1) / 2) = K + 1 >= k_b + 1 always: nothing is dropped.
    assert all(_kept(StreamingSelector(SelectionConfig(window=8, quota_slack=2.0), seed=0), _quota_samples()))


def test_a_bucket_whose_candidates_all_fail_claims_no_share() -> None:
    # B's candidates are all below tau: B is not active, A stays alone and keeps everything.
    samples = [_s(f"a{i}", 5.0) if i % 2 else _s(f"b{i}", 1.0, bucket=B) for i in range(20)]
    decisions = StreamingSelector(SelectionConfig(window=8, quota_slack=1.0, tau=2.0), seed=0).offer(samples)
    assert all(d.kept == (d.sample.modality == Modality.CT) for d in decisions)


def test_near_duplicates_are_removed_against_everything_kept_on_that_image() -> None:
    selector = StreamingSelector(SelectionConfig(window=4, tau=2.0), seed=0)
    assert _kept(selector, [_s("s1", 8.0, "X", "Which lobe contains the nodule?")]) == [True]
    assert all(_kept(selector, [_s(f"filler{i}", 8.0) for i in range(50)], chunk=7))  # long past the window
    (twin,) = selector.offer([_s("s2", 9.0, "X", "which LOBE contains the nodule ?")])
    assert (twin.kept, twin.reason) == (False, "near_duplicate") and "kept sample s1" in twin.detail
    assert _kept(selector, [_s("s3", 8.0, "Y", "Which lobe contains the nodule?")]) == [True]  # another image
    # a rejected question blocks nothing: only kept ones count
    assert _kept(selector, [_s("s4", 1.0, "Z", "Is the heart enlarged?"), _s("s5", 8.0, "Z", "Is the heart enlarged")]) \
        == [False, True]


def test_duplicate_ids_against_everything_ever_offered_and_unscored() -> None:
    selector = StreamingSelector(SelectionConfig(tau=2.0), seed=0)
    first = selector.offer([_s("a", 1.0), _s("b", None), _s("c", float("nan")), _s("d", 7.0)])
    assert [d.reason for d in first] == ["below_tau", "unscored", "unscored", None]
    again = selector.offer([_s("a", 9.0, image="other"), _s("d", 9.0, image="other2"), _s("e", 9.0)])
    assert [d.reason for d in again] == ["duplicate_id", "duplicate_id", None]
    assert selector.counts() == {"kept": 2, "duplicate_id": 2, "heldout_image": 0, "heldout_near_duplicate": 0,
                                 "test_question": 0, "unscored": 2, "below_tau": 1, "below_rank": 0,
                                 "random_drop": 0, "over_quota": 0, "near_duplicate": 0}


def test_decisions_carry_the_provenance() -> None:
    kept, dropped = StreamingSelector(SelectionConfig(tau=2.0), seed=0).offer([_s("k", 9.0), _s("r", 0.0)])
    assert kept.sample.provenance.selected is True and kept.sample.provenance.reason is None and kept.reason is None
    assert dropped.sample.provenance.selected is False and dropped.sample.provenance.reason == "below_tau"
    assert kept.sample.provenance.reward == 9.0  # nothing else changed


# ---------------------------------------------------------------------------------------------- random ablation
def test_random_mode_ignores_rewards_and_keeps_the_expected_share() -> None:
    everything = StreamingSelector(SelectionConfig(mode="random", tau=100.0), seed=0)
    assert all(_kept(everything, [_s(f"u{i}", None if i % 2 else -6.0) for i in range(40)]))
    cfg = SelectionConfig(mode="random", keep_fraction=0.3, balance=False)
    samples = [_s(f"r{i}", 10.0) for i in range(3000)]
    kept = _kept(StreamingSelector(cfg, seed=1), samples, chunk=24)
    assert 0.27 <= sum(kept) / len(kept) <= 0.33  # binomial sd 0.008: this seed's share, not a flaky bound
    # seeded per id: chunking does not matter, the seed does
    assert _kept(StreamingSelector(cfg, seed=1), samples, chunk=1) == kept
    assert _kept(StreamingSelector(cfg, seed=2), samples, chunk=24) != kept
    reasons = {d.reason for d in StreamingSelector(cfg, seed=1).offer(samples[:50]) if not d.kept}
    assert reasons == {"random_drop"}


def test_random_mode_still_applies_duplicates_quotas_and_near_duplicates() -> None:
    quota = StreamingSelector(SelectionConfig(mode="random", window=8, quota_slack=1.0), seed=0)
    assert _kept(quota, _quota_samples(reward=None)) == QUOTA_KEPT
    other = StreamingSelector(SelectionConfig(mode="random"), seed=0)
    decisions = other.offer([_s("p", None, "X", "Is it a CT?"), _s("p", None, "Y"), _s("q", None, "X", "is it a ct")])
    assert [d.reason for d in decisions] == [None, "duplicate_id", "near_duplicate"]


# ---------------------------------------------------------------------------------------------- the guard
def test_the_guard_rejects_leaks_before_anything_else_in_both_modes() -> None:
    rng = np.random.default_rng(0)
    held = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    pixels = {"copy": np.clip(held.astype(int) + rng.integers(-3, 4, held.shape), 0, 255).astype(np.uint8),
              "clean": rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)}
    test_q = _s("t", image="held", q="Which vertebra shows the compression fracture?")
    for mode in ("reward", "random"):
        guard = ContaminationGuard({"held": held}, [test_q], SelectionConfig())
        selector = StreamingSelector(SelectionConfig(mode=mode), seed=0, guard=guard)
        decisions = selector.offer([_s("1", None, "held"), _s("2", None, "copy"),
                                    _s("3", 8.0, "clean", "which vertebra shows the compression fracture"),
                                    _s("4", 8.0, "clean")], lookup=pixels.__getitem__)
        assert [d.reason for d in decisions] == ["heldout_image", "heldout_near_duplicate", "test_question", None]


# ---------------------------------------------------------------------------------------------- invariants
_BUCKETS = [A, B, (Modality.XRAY, TaskType.MODALITY)]
_QUESTIONS = ["Is there a fracture?", "Is there a fracture ?", "Which organ is shown?", "What modality is this?",
              "What modality is this", "Is the lesion malignant?"]


@st.composite
def _stream(draw: st.DrawFn) -> tuple[list[Sample], SelectionConfig, list[int]]:
    n = draw(st.integers(0, 60))
    samples = []
    for i in range(n):
        sid = f"s{draw(st.integers(0, n))}"  # ids repeat now and then
        reward = draw(st.one_of(st.none(), st.just(float("nan")), st.floats(-6, 10).map(lambda r: round(r, 1))))
        samples.append(_s(sid, reward, f"i{draw(st.integers(0, 5))}", draw(st.sampled_from(_QUESTIONS)),
                          draw(st.sampled_from(_BUCKETS))))
    cfg = SelectionConfig(mode=draw(st.sampled_from(["reward", "random"])),
                          tau=draw(st.one_of(st.none(), st.floats(-6, 10))),
                          keep_fraction=draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
                          balance=draw(st.booleans()), window=draw(st.integers(1, 12)),
                          quota_slack=draw(st.floats(1.0, 3.0)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return samples, cfg, cuts


def _chunks(samples: list[Sample], cuts: list[int]) -> list[list[Sample]]:
    edges = [0, *cuts, len(samples)]
    return [samples[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=80, deadline=None)
@given(stream=_stream(), seed=st.integers(0, 3), restore_at=st.integers(0, 8))
def test_accounting_and_restore_equals_uninterrupted(stream: tuple, seed: int, restore_at: int) -> None:
    samples, cfg, cuts = stream
    chunks = _chunks(samples, cuts)
    whole = StreamingSelector(cfg, seed)
    straight = [d for chunk in chunks for d in whole.offer(chunk)]
    # accounting: one decision per candidate, in order, kept or rejected with a reason, provenance set
    assert [d.sample.sample_id for d in straight] == [s.sample_id for s in samples]
    for d in straight:
        assert (d.reason is None) == d.kept and (d.kept or d.reason in STREAM_REASONS)
        assert d.sample.provenance.selected == d.kept and d.sample.provenance.reason == d.reason
    counts = whole.counts()
    assert sum(counts.values()) == len(samples) and counts["kept"] == whole.kept_count == sum(d.kept for d in straight)
    kept = [d.sample for d in straight if d.kept]
    assert len({s.sample_id for s in kept}) == len(kept)
    for i, s in enumerate(kept):  # no two kept questions on one image are near-duplicates, by the batch measure
        assert all(question_similarity(s, k) < cfg.dedup_threshold for k in kept[:i] if k.image_id == s.image_id)
    if cfg.mode == "reward":
        assert all(s.provenance.reward is not None and math.isfinite(s.provenance.reward) for s in kept)
        assert cfg.tau is None or all(s.provenance.reward > cfg.tau for s in kept)
    # restore: a fresh selector from the JSON state decides the rest exactly as the uninterrupted one
    k = min(restore_at, len(chunks))
    first = StreamingSelector(cfg, seed)
    before = [d for chunk in chunks[:k] for d in first.offer(chunk)]
    restored = StreamingSelector(cfg, seed)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    after = [d for chunk in chunks[k:] for d in restored.offer(chunk)]
    assert before + after == straight and restored.counts() == counts


@settings(max_examples=60, deadline=None)
@given(rewards=st.lists(st.one_of(st.none(), st.floats(-6, 10)), max_size=30), tau=st.one_of(st.none(), st.floats(-6, 10)),
       dup=st.lists(st.integers(0, 29), max_size=5))
def test_without_ranking_quotas_or_shared_images_stream_and_batch_agree(rewards: list, tau: float | None,
                                                                       dup: list[int]) -> None:
    samples = [_s(f"s{i}", r) for i, r in enumerate(rewards)]
    samples += [_s(f"s{j}", 5.0, image=f"again{j}") for j in dup if j < len(rewards)]  # re-offered ids
    cfg = SelectionConfig(tau=tau, balance=False)
    batch = select_samples(samples, cfg, seed=0)
    stream = StreamingSelector(cfg, seed=0).offer(samples)
    assert {s.sample_id for s in batch.kept} == {d.sample.sample_id for d in stream if d.kept}
    assert sorted(r.reason for r in batch.rejected) == sorted(d.reason for d in stream if not d.kept)


def test_a_state_from_another_config_seed_or_version_is_refused() -> None:
    cfg = SelectionConfig(window=8)
    selector = StreamingSelector(cfg, seed=3)
    selector.offer([_s("a")])
    state = selector.state_dict()
    with pytest.raises(ValueError, match=r"selection\.window \(8 -> 9\)"):
        StreamingSelector(SelectionConfig(window=9), seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="seed 3"):
        StreamingSelector(cfg, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        StreamingSelector(cfg, seed=3).load_state_dict(state | {"version": 0})


def test_a_restored_selector_continues_a_long_stream_exactly() -> None:
    # Every piece of state matters here: the ranking window, the quota window, the kept questions, the ids.
    rng = np.random.default_rng(7)
    samples = [_s(f"s{int(rng.integers(0, 260)):03d}", round(float(rng.uniform(-6, 10)), 2), f"i{int(rng.integers(0, 12))}",
                  _QUESTIONS[int(rng.integers(0, len(_QUESTIONS)))], _BUCKETS[int(rng.integers(0, 3))])
               for _ in range(240)]
    chunks = [samples[i:i + 12] for i in range(0, len(samples), 12)]
    cfg = SelectionConfig(window=16, keep_fraction=0.4, tau=-2.0, quota_slack=1.2)
    whole = StreamingSelector(cfg, seed=5)
    straight = [d for chunk in chunks for d in whole.offer(chunk)]
    assert {d.reason for d in straight} >= {None, "duplicate_id", "below_tau", "below_rank", "over_quota",
                                            "near_duplicate"}
    for k in (4, 10, 15):
        first = StreamingSelector(cfg, seed=5)
        before = [d for chunk in chunks[:k] for d in first.offer(chunk)]
        restored, forgetful = StreamingSelector(cfg, seed=5), StreamingSelector(cfg, seed=5)
        restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert before + [d for chunk in chunks[k:] for d in restored.offer(chunk)] == straight
        # without the state the same offers are decided differently: the test can tell
        assert before + [d for chunk in chunks[k:] for d in forgetful.offer(chunk)] != straight
