"""Rule-based rewards for the solver: answer extraction, accuracy, format, and MedGR²'s combined reward.

Rewards are plain functions of (samples, completions) returning one float per completion, TRL style,
so they can be used in any trainer and tested without a model; `reward.rule` picks the one GRPO uses
(`rule_reward`: accuracy, or a user's own importable function). The combined GRPO reward of MedGR² is
    r = alpha * norm(R(image, q, a')) + beta * 1[extract(a') == answer]
with the reward-model score R in [r_min, r_max] = [-6, 10] mapped linearly onto [0, 1].

Answer extraction is shared with evaluation scoring (eval/scoring.py), so training and evaluation
judge an answer the same way. It understands, in this order: the last `<answer>...</answer>` block,
else whatever follows the last `</think>`; then an option letter ("B", "(B)", "B. Microscopy",
"The answer is B"), the text of an option (exactly, as the one option named in the answer, or as the
one option that contains the answer: "MRI" -> "Magnetic Resonance Imaging (MRI)"), yes/no,
and finally normalised free text (lower case, no punctuation, single spaces).
"""

from __future__ import annotations

import importlib
import math
import re
import string
from collections.abc import Callable, Sequence

from medgr2_ray.config import RewardConfig
from medgr2_ray.types import Sample

_PUNCT = str.maketrans("", "", string.punctuation)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_THINK_END = re.compile(r"</think>", re.IGNORECASE)
# A bare letter, optionally bracketed and followed by '.', ')' or ':' ("B", "(B)", "B.").
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?[.):]?$")
# A letter that opens the answer and is followed by a delimiter ("B. Microscopy", "(B) Microscopy").
# An uppercase "A" followed by a space and a word is an article, so a delimiter is required.
_LETTER_PREFIX = re.compile(r"^\(?([A-Z])(?:\)|[.:])\s")
# "the answer is B", "Answer: (C)", "option D", "choice A."
_LETTER_PHRASE = re.compile(r"(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-Z])\b(?:\)|[.,;:]|\s*$)")
_FORMAT = re.compile(r"^\s*<think>(?:(?!<think>).)*?</think>\s*<answer>(.+?)</answer>\s*$", re.DOTALL | re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: the paper's exact-match normalisation."""
    return " ".join(text.lower().translate(_PUNCT).split())


def answer_span(text: str) -> str:
    """The part of a completion that holds the answer: the last <answer> block, else the text after
    the last </think>, else the whole text (stripped)."""
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    parts = _THINK_END.split(text)
    return parts[-1].strip()


def _letter(span: str, num_options: int) -> int | None:
    """The option index a letter in the span names, or None."""
    match = _LETTER_ONLY.search(span) or _LETTER_PREFIX.search(span)
    if match is None:
        # In a sentence the conclusion comes last: "Option A is tempting, but the answer is B."
        phrases = list(_LETTER_PHRASE.finditer(span))
        match = phrases[-1] if phrases else None
    if match is None:
        return None
    index = ord(match.group(1)) - ord("A")
    return index if 0 <= index < num_options else None


def _named_option(span_norm: str, options: Sequence[str]) -> str | None:
    """The single option whose text the answer names (as whole words), or None when none or several do.

    An option contained in another named option ("effusion" in "pleural effusion") does not count as a
    second one: the longer, more specific option is meant.
    """
    padded = f" {span_norm} "
    named = [o for o in options if normalize_text(o) and f" {normalize_text(o)} " in padded]
    named = [o for o in named if not any(o != other and normalize_text(o) in normalize_text(other) for other in named)]
    return named[0] if len(named) == 1 else None


def extract_answer(text: str, options: Sequence[str]) -> str | None:
    """The answer a completion gives: the matched option's text, or normalised free text when there are
    no options. None when options exist and the answer matches none of them (or several), or is empty."""
    span = answer_span(text)
    span_norm = normalize_text(span)
    if not options:
        return span_norm or None
    for option in options:  # exact option text first: an option may itself look like "A" or "Yes"
        if normalize_text(option) == span_norm and span_norm:
            return option
    index = _letter(span, len(options))
    if index is not None:
        return options[index]
    named = _named_option(span_norm, options)
    if named is not None:
        return named
    contained = [o for o in options if span_norm and f" {span_norm} " in f" {normalize_text(o)} "]
    if len(contained) == 1:  # "MRI" for "Magnetic Resonance Imaging (MRI)": the one option it abbreviates
        return contained[0]
    first = span_norm.split(" ", 1)[0] if span_norm else ""
    if first in ("yes", "no"):  # "Yes, there is an effusion." -> the Yes option
        for option in options:
            if normalize_text(option) == first:
                return option
    return None


def _is_correct(sample: Sample, completion: str) -> bool:
    """Whether a completion's extracted answer is the sample's answer."""
    got = extract_answer(completion, sample.options)
    if got is None:
        return False
    if sample.options:
        return got == sample.answer
    return got == normalize_text(sample.answer)


def _check_lengths(name: str, a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name}: got {len(a)} and {len(b)} items; pass one per completion")


def accuracy_reward(samples: Sequence[Sample], completions: Sequence[str]) -> list[float]:
    """1.0 where the completion's extracted answer equals the sample's answer, else 0.0."""
    _check_lengths("accuracy_reward(samples, completions)", samples, completions)
    return [1.0 if _is_correct(s, c) else 0.0 for s, c in zip(samples, completions)]


RuleReward = Callable[[Sequence[Sample], Sequence[str]], list[float]]
RULES: dict[str, RuleReward] = {"accuracy": accuracy_reward}


def rule_reward(name: str) -> RuleReward:
    """The rule `reward.rule` names: a registered one (`RULES`) or an importable `module:function`."""
    if name in RULES:
        return RULES[name]
    module, _, attr = name.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"reward.rule '{name}': cannot import it ({exc}); name one of {sorted(RULES)} or an "
                         "importable module:function (samples, completions) -> list[float]") from None
    if not callable(found):
        raise ValueError(f"reward.rule '{name}' is a {type(found).__name__}, not a function")
    return found


def format_reward(completions: Sequence[str]) -> list[float]:
    """1.0 for `<think>...</think><answer>...</answer>` with a non-empty answer and nothing around, else 0.0."""
    return [1.0 if (m := _FORMAT.match(c)) and m.group(1).strip() else 0.0 for c in completions]


def normalize_rm_score(score: float, cfg: RewardConfig) -> float:
    """Map a reward-model score from [r_min, r_max] (-6, 10) onto [0, 1], clipping outside values."""
    if not math.isfinite(score):
        raise ValueError(f"reward-model score {score!r} is not finite; the scorer produced a NaN/inf")
    if cfg.r_max <= cfg.r_min:
        raise ValueError(f"reward.r_max ({cfg.r_max}) must be greater than reward.r_min ({cfg.r_min})")
    return min(1.0, max(0.0, (score - cfg.r_min) / (cfg.r_max - cfg.r_min)))


def combined_reward(rm_scores: Sequence[float], accuracies: Sequence[float], cfg: RewardConfig) -> list[float]:
    """MedGR²'s GRPO reward: alpha * norm(R) + beta * accuracy, per completion."""
    _check_lengths("combined_reward(rm_scores, accuracies)", rm_scores, accuracies)
    return [cfg.alpha * normalize_rm_score(s, cfg) + cfg.beta * float(a) for s, a in zip(rm_scores, accuracies)]
