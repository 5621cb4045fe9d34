"""Answer extraction, accuracy/format rewards and MedGR²'s combined reward, on hand-written cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medgr2_ray.algo.rewards import (
    accuracy_reward,
    combined_reward,
    extract_answer,
    format_reward,
    normalize_rm_score,
    normalize_text,
)
from medgr2_ray.config import RewardConfig
from medgr2_ray.types import Modality, Sample, TaskType

OPTS = ("CT", "MRI", "Pleural effusion", "Effusion")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("B", "MRI"),
        ("(B)", "MRI"),
        ("b", None),  # a lower-case letter is not an option letter (could be a word)
        ("B. MRI", "MRI"),
        ("C) Pleural effusion", "Pleural effusion"),
        ("The answer is A.", "CT"),
        ("Option A is tempting, but the answer is B.", "MRI"),
        ("Answer: (D)", "Effusion"),
        ("E", None),  # out of range
        ("mri", "MRI"),
        ("The image is an MRI scan.", "MRI"),
        ("There is a pleural effusion.", "Pleural effusion"),  # the longer option is meant, not "Effusion"
        ("Effusion!", "Effusion"),
        ("CT or MRI", None),  # names two options: ambiguous, wrong under strict scoring
        ("A mass is seen", None),  # an article, not a letter
        ("Ultrasound", None),
        ("<think>It could be CT.</think><answer>B</answer>", "MRI"),
        ("<think>Looks like option A.</think> Final: MRI", "MRI"),
        ("<answer>A</answer> then <answer>D</answer>", "Effusion"),
        ("", None),
    ],
)
def test_extract_answer_with_options(text: str, want: str | None) -> None:
    assert extract_answer(text, OPTS) == want


def test_extract_yes_no_and_free_text() -> None:
    assert extract_answer("Yes, there is an effusion.", ("No", "Yes")) == "Yes"
    assert extract_answer("no.", ("Yes", "No")) == "No"
    assert extract_answer("  Left   Lung! ", ()) == "left lung"
    assert extract_answer("<think>hmm</think><answer>Yes.</answer>", ()) == "yes"
    assert extract_answer("...", ()) is None
    # an answer that is part of exactly one option names it; part of several names none
    mod = ("Microscopy", "Magnetic Resonance Imaging (MRI)", "CT scan", "PET scan")
    assert extract_answer("MRI", mod) == "Magnetic Resonance Imaging (MRI)"
    assert extract_answer("scan", mod) is None
    # an option that itself looks like a letter is matched by its text first
    assert extract_answer("A", ("B", "A")) == "A"


def _sample(options: tuple[str, ...], answer: str) -> Sample:
    return Sample(sample_id="s", image_id="i", image_path="i.png", question="q?", options=options, answer=answer,
                  task_type=TaskType.MODALITY, modality=Modality.CT)


def test_accuracy_reward() -> None:
    mc, free = _sample(OPTS, "MRI"), _sample((), "Left lung")
    got = accuracy_reward([mc, mc, mc, free, free], ["B", "<answer>A</answer>", "nonsense", "left lung.", "right lung"])
    assert got == [1.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="one per completion"):
        accuracy_reward([mc], ["B", "C"])


def test_format_reward() -> None:
    got = format_reward([
        "<think>reasoning</think><answer>B</answer>",
        "  <think>a\nb</think>\n<answer> MRI </answer>\n",
        "<answer>B</answer>",
        "<think>x</think><answer> </answer>",
        "<think>x</think><answer>B</answer> trailing",
        "<think><think>x</think><answer>B</answer>",
    ])
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_normalize_rm_score_and_combined_by_hand() -> None:
    cfg = RewardConfig()
    assert [normalize_rm_score(s, cfg) for s in (-6.0, 10.0, 2.0, -20.0, 15.0)] == [0.0, 1.0, 0.5, 0.0, 1.0]
    # 0.8 * 0.5 + 0.2 * 1 = 0.6; 0.8 * 1 + 0 = 0.8; 0 + 0.2 = 0.2
    assert combined_reward([2.0, 10.0, -6.0], [1.0, 0.0, 1.0], cfg) == pytest.approx([0.6, 0.8, 0.2])
    with pytest.raises(ValueError, match="not finite"):
        normalize_rm_score(float("nan"), cfg)
    with pytest.raises(ValueError, match="r_max"):
        normalize_rm_score(0.0, RewardConfig(r_min=1.0, r_max=1.0))


@given(score=st.floats(-100, 100), acc=st.sampled_from([0.0, 1.0]))
def test_combined_reward_is_bounded_and_monotone(score: float, acc: float) -> None:
    cfg = RewardConfig()
    r = combined_reward([score], [acc], cfg)[0]
    assert 0.0 <= r <= cfg.alpha + cfg.beta + 1e-12
    assert combined_reward([score + 1.0], [acc], cfg)[0] >= r


def test_normalize_text() -> None:
    assert normalize_text("  Pleural-Effusion, (left)!  ") == "pleuraleffusion left"


def share_of_a(samples: list[Sample], completions: list[str]) -> list[float]:
    """A user's own rule for the tests below: the share of characters that are 'A'."""
    return [c.count("A") / max(1, len(c)) for c in completions]


def test_reward_rule_is_accuracy_or_a_users_importable_function() -> None:
    from pydantic import ValidationError

    from medgr2_ray.algo.rewards import RULES, accuracy_reward, rule_reward

    assert rule_reward("accuracy") is accuracy_reward and RewardConfig().rule == "accuracy" and "accuracy" in RULES
    mine = rule_reward("tests.algo.test_rewards:share_of_a")
    assert mine([], ["AAB", "xy"]) == [2 / 3, 0.0]
    with pytest.raises(ValueError, match="reward.rule 'tests.algo.nowhere:f': cannot import"):
        rule_reward("tests.algo.nowhere:f")
    with pytest.raises(ValueError, match="not a function"):
        rule_reward("medgr2_ray.algo.rewards:RULES")
    with pytest.raises(ValidationError):
        RewardConfig(rule="not a function path")

