"""The reward of benchmarks/vs_trl.py's job, as a plain function, importable wherever it runs: in the
benchmark itself, in TRL's trainer, and in our scorer actors as `reward.rule = "letter_reward:letter_accuracy"`
(the benchmarks directory is on the Ray workers' path, `grpo_job.ray_init`).

The reward: the share of non-space characters of the completion that are the correct option's letter
(A for CT, B for MR), case-insensitive. Dense enough for a near-uniform tiny model to climb within tens
of steps, and it depends on the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LETTERS = ("A", "B")  # the options' letters, in option order


def letter_reward(texts: Sequence[str], letters: Sequence[str]) -> list[float]:
    """Share of non-space characters that are the correct letter (case-insensitive)."""
    out = []
    for text, letter in zip(texts, letters):
        chars = [c for c in text.upper() if not c.isspace()]
        out.append(sum(c == letter for c in chars) / max(1, len(chars)))
    return out


def letter_accuracy(samples: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """`letter_reward` as a `reward.rule` (samples, completions) -> rewards: the correct letter is the
    one of the sample's answer among its options."""
    return letter_reward(completions, [LETTERS[s.options.index(s.answer)] for s in samples])
