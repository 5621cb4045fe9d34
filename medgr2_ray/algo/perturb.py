"""MedGR²'s graded data for the reward model: from each faithful sample, three corrupted copies.

The reward model R learns to score (image, question, answer) by regression onto graded targets:
    faithful    the sample as written                                      target 10
    perturbed   plausible but wrong: the answer moved to another option
                (free-text answers: a finding altered, e.g. left -> right)  target 6
    incoherent  the question and rationale shuffled or garbled             target 0
    irrelevant  the untouched text paired with a different image           target -6
(targets from `GradedDataConfig`). Every corruption is guaranteed to change what it claims to change;
the builder never silently skips a sample: it raises when a corruption is impossible for the whole set
(the irrelevant pairing needs at least two distinct images).

Deterministic by seed: each sample's corruptions draw from a generator seeded by (seed, sample_id), so
a sample's graded copies do not depend on which other samples are in the batch (except which other
image an irrelevant copy borrows). Pure Python: no Ray, no models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from medgr2_ray.config import GradedDataConfig
from medgr2_ray.types import Modality, Sample

KINDS = ("faithful", "perturbed", "incoherent", "irrelevant")

# Findings whose flip turns a correct statement into a wrong one (each pair is swapped both ways).
_ANTONYMS: tuple[tuple[str, str], ...] = (
    ("left", "right"), ("upper", "lower"), ("anterior", "posterior"), ("benign", "malignant"),
    ("normal", "abnormal"), ("increased", "decreased"), ("present", "absent"), ("positive", "negative"),
    ("mild", "severe"), ("enlarged", "shrunken"), ("acute", "chronic"), ("yes", "no"), ("high", "low"),
)
_SWAP = {a: b for a, b in _ANTONYMS} | {b: a for a, b in _ANTONYMS}
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(_SWAP, key=len, reverse=True)) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class GradedSample:
    """One reward-model training sample: the (possibly corrupted) sample, its kind and its target score."""

    sample: Sample
    kind: str  # one of KINDS
    target: float
    detail: str = ""  # what was changed, for the run report ("answer 'CT' -> 'MRI'")


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[:1].isupper() else word


def alter_findings(text: str) -> str:
    """Swap every finding word with its opposite (left <-> right, benign <-> malignant, ...)."""
    return _SWAP_RE.sub(lambda m: _match_case(_SWAP[m.group(0).lower()], m.group(0)), text)


def _replace_ci(text: str, old: str, new: str) -> str:
    """Replace whole-phrase occurrences of `old` (any case) with `new`."""
    if not old.strip():
        return text
    return re.sub(r"(?<!\w)" + re.escape(old) + r"(?!\w)", lambda _: new, text, flags=re.IGNORECASE)


def perturb(sample: Sample, rng: random.Random) -> tuple[Sample, str]:
    """A plausible but wrong copy: another option as the answer (the rationale follows it, so the text
    stays self-consistent and only the image can tell), or, for free text, altered findings."""
    others = [o for o in sample.options if o != sample.answer]
    if others and sample.answer in sample.options:
        new = rng.choice(others)
        rationale = _replace_ci(sample.rationale, sample.answer, new)
        return replace(sample, answer=new, rationale=rationale), f"answer {sample.answer!r} -> {new!r}"
    new = alter_findings(sample.answer)
    if new.lower() == sample.answer.lower():
        # No finding word to flip: negate the finding itself.
        new = f"no {sample.answer}" if sample.answer else "no finding"
    return replace(sample, answer=new, rationale=alter_findings(sample.rationale)), f"finding {sample.answer!r} -> {new!r}"


def _garble_word(word: str, rng: random.Random) -> str:
    letters = list(word)
    rng.shuffle(letters)
    out = "".join(letters)
    if out == word:  # a palindrome-ish or one-letter word: substitute a letter instead
        i = rng.randrange(len(word))
        out = word[:i] + rng.choice([c for c in "qxzjkvw" if c != word[i].lower()]) + word[i + 1:]
    return out


def garble(text: str, rng: random.Random) -> str:
    """Scramble the letters of every word; the result always differs from the input."""
    words = text.split()
    if not words:
        return "".join(rng.choice("qxzjkvw") for _ in range(6))
    return " ".join(_garble_word(w, rng) for w in words)


def shuffle_words(text: str, rng: random.Random) -> str:
    """The same words in a random order that differs from the original, else a garbled copy."""
    words = text.split()
    if len(set(words)) < 2:
        return garble(text, rng)
    while True:
        order = words[:]
        rng.shuffle(order)
        if order != words:
            return " ".join(order)


def make_incoherent(sample: Sample, rng: random.Random) -> tuple[Sample, str]:
    """Question and rationale shuffled (word salad) or garbled (letter salad), options and answer kept."""
    how = rng.choice(("shuffled", "garbled"))
    corrupt = shuffle_words if how == "shuffled" else garble
    rationale = corrupt(sample.rationale, rng) if sample.rationale else ""
    return replace(sample, question=corrupt(sample.question, rng), rationale=rationale), f"{how} text"


def _image_pool(samples: Sequence[Sample]) -> list[tuple[str, str, Modality]]:
    """Distinct images (id, path, modality), sorted so the choice does not depend on input order."""
    pool = {s.image_id: (s.image_id, s.image_path, s.modality) for s in samples}
    return [pool[k] for k in sorted(pool)]


def make_irrelevant(sample: Sample, pool: Sequence[tuple[str, str, Modality]], rng: random.Random) -> tuple[Sample, str]:
    """The same text on another image, of another modality when there is one (a same-modality image
    could make a modality question still correct)."""
    others = [p for p in pool if p[0] != sample.image_id]
    if not others:
        raise ValueError(
            f"sample {sample.sample_id}: an irrelevant pairing needs a second image, but every sample is on "
            f"image {sample.image_id!r}; give the graded-data builder samples from at least two images"
        )
    different = [p for p in others if p[2] != sample.modality]
    image_id, path, modality = rng.choice(different or others)
    detail = f"image {sample.image_id!r} -> {image_id!r}" + ("" if different else " (same modality: no other available)")
    return replace(sample, image_id=image_id, image_path=path), detail


def _tag(sample: Sample, kind: str) -> Sample:
    """Give a derived copy its own id and provenance pointing back to the original."""
    if kind == "faithful":
        return sample
    derived = replace(sample, sample_id=f"{sample.sample_id}~{kind}")
    return derived.with_provenance(producer=f"perturb:{kind}", parent_id=sample.sample_id, reward=None, selected=None)


def build_graded_samples(samples: Sequence[Sample], cfg: GradedDataConfig, seed: int,
                         images: Sequence[tuple[str, str, Modality]] | None = None) -> list[GradedSample]:
    """Four graded samples per input sample (faithful, perturbed, incoherent, irrelevant), in input order.
    An irrelevant sample moves to another of `images` ((id, path, modality) of the training images; default:
    the samples' own images), so a small batch on one image still gets its irrelevant pairing."""
    pool = sorted(images) if images else _image_pool(samples)
    targets = {"faithful": cfg.faithful, "perturbed": cfg.perturbed, "incoherent": cfg.incoherent,
               "irrelevant": cfg.irrelevant}
    out: list[GradedSample] = []
    for sample in samples:
        rng = random.Random(f"{seed}:{sample.sample_id}")
        made = {
            "faithful": (sample, "as written"),
            "perturbed": perturb(sample, rng),
            "incoherent": make_incoherent(sample, rng),
            "irrelevant": make_irrelevant(sample, pool, rng),
        }
        out.extend(GradedSample(sample=_tag(s, k), kind=k, target=targets[k], detail=d) for k, (s, d) in made.items())
    return out
