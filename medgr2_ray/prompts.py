"""How samples become prompts and how generator text becomes samples: the text protocol of MedGR².

Three models read and write text about one image:
- the generator G is asked (with a prompting strategy) to write a sample in a fixed, line-based
  format that `parse_generated` turns back into a `Sample` or a `ParseFailure` with a reason;
- the reward model R reads a rendered sample (`reward_prompt`) and returns a score;
- the solver P reads a question with lettered options (`solver_prompt`) and answers with the option text.

A line-based format instead of JSON because a ~1M-parameter generator learns it in a few hundred steps
and a half-broken line still parses field by field. Pure functions, no models, no Ray.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from medgr2_ray.types import Modality, PromptStrategy, Provenance, Sample, TaskType

_STRATEGY_HINT = {
    PromptStrategy.DIRECT: "Write one question about this image.",
    PromptStrategy.STEP_BY_STEP: "Look at the image step by step, then write one question about it.",
    PromptStrategy.META_COGNITIVE: "Think about what a student could get wrong here, then write one question.",
}


def generator_prompt(modality: Modality, anatomy: str, task: TaskType, strategy: PromptStrategy) -> str:
    """The instruction given to the generator for one image."""
    return (
        f"{_STRATEGY_HINT[strategy]} Modality: {modality.value}. Anatomy: {anatomy}. Task: {task.value}.\n"
        "Reply as: Question: ... / Options: A. ... | B. ... | C. ... | D. ... / Answer: <letter> / Rationale: ..."
    )


def _letters(options: tuple[str, ...]) -> str:
    return " | ".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def render_sample(sample: Sample) -> str:
    """A sample in the generator's output format (also its SFT target)."""
    letter = sample.answer_letter or sample.answer
    text = f"Question: {sample.question}\nOptions: {_letters(sample.options)}\nAnswer: {letter}"
    return text + (f"\nRationale: {sample.rationale}" if sample.rationale else "")


def reward_prompt(sample: Sample) -> str:
    """What the reward model reads next to the image: the whole sample, answer included."""
    return "Rate this medical question-answer pair for the image.\n" + render_sample(sample)


def solver_prompt(sample: Sample) -> str:
    """The question as the solver sees it: lettered options, answer with the option text."""
    lines = [sample.question] + [f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(sample.options)]
    return "\n".join(lines) + "\nAnswer with the option text."


@dataclass(frozen=True)
class ParseFailure:
    """Why a generator output could not become a sample (counted and reported, never silently lost)."""

    reason: str
    text: str


_FIELD = re.compile(r"^\s*(question|options|answer|rationale)\s*:\s*(.*)$", re.IGNORECASE)
_OPTION = re.compile(r"^\s*([A-Ha-h])\s*[.)]\s*(.+?)\s*$")


def _fields(text: str) -> dict[str, str]:
    """First occurrence of each `Field: value` line (values may continue on following lines)."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m:
            key = m.group(1).lower()
            current = key if key not in found else None
            if current:
                found[current] = m.group(2).strip()
        elif current and line.strip():
            found[current] += " " + line.strip()
    return found


def _parse_options(raw: str) -> tuple[str, ...]:
    parts = [p for p in (s.strip() for s in raw.split("|")) if p]
    options = []
    for part in parts:
        m = _OPTION.match(part)
        options.append(m.group(2) if m else part)
    return tuple(options)


def _resolve_answer(raw: str, options: tuple[str, ...]) -> str | None:
    """The answer as option text: a letter ("B", "B.") or the option text itself."""
    raw = raw.strip().rstrip(".").strip()
    if len(raw) == 1 and raw.isalpha():
        index = ord(raw.upper()) - ord("A")
        return options[index] if 0 <= index < len(options) else None
    lowered = {o.lower(): o for o in options}
    return lowered.get(raw.lower())


def sample_id_for(image_id: str, text: str, salt: str = "") -> str:
    """A stable id from the image and the text, so the same output never counts twice."""
    return hashlib.sha1(f"{image_id}\0{salt}\0{text}".encode()).hexdigest()[:16]


def parse_generated(
    text: str, *, image_id: str, image_path: str, modality: Modality, task: TaskType, provenance: Provenance
) -> Sample | ParseFailure:
    """Turn one generator output into a sample, or say exactly why not."""
    fields = _fields(text)
    for key in ("question", "options", "answer"):
        if not fields.get(key):
            return ParseFailure(reason=f"missing '{key.capitalize()}:' line", text=text)
    options = _parse_options(fields["options"])
    if len(options) < 2:
        return ParseFailure(reason="fewer than 2 options", text=text)
    if len(set(o.lower() for o in options)) != len(options):
        return ParseFailure(reason="duplicate options", text=text)
    answer = _resolve_answer(fields["answer"], options)
    if answer is None:
        return ParseFailure(reason=f"answer '{fields['answer'][:20]}' is not one of the options", text=text)
    return Sample(
        sample_id=sample_id_for(image_id, text, str(provenance.model_version)),
        image_id=image_id,
        image_path=image_path,
        question=fields["question"],
        options=options,
        answer=answer,
        task_type=task,
        modality=modality,
        rationale=fields.get("rationale", ""),
        provenance=provenance,
    )
