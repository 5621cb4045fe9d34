"""Scoring answers to medical VQA benchmarks: accuracy overall and per dataset, modality and question
type, under two protocols, plus macro-F1.

Protocols:
- `paper`: exact match after lower-casing and stripping punctuation (what MedGR² reports; the authors'
  released OmniMedVQA predictions score 6,865 / 7,851 = 87.44% this way).
- `strict`: the answer must resolve to exactly one of the question's options (letter, option text,
  <answer> tags ... via `algo.rewards.extract_answer`, the same judge the accuracy reward uses) and that
  option must be the ground truth; an answer that matches no option, or several, is wrong. It needs the
  options, so it is computed only where the test records are given.

Everything is counted, nothing is dropped silently: unreadable prediction lines, predictions without a
test record and test records without a prediction (scored as wrong) all appear in the report.
Pure Python: no Ray, no models.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medgr2_ray.algo.rewards import extract_answer, normalize_text
from medgr2_ray.types import Sample

PROTOCOLS = ("paper", "strict")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class EvalItem:
    """One question to score: the model's answer (None when it gave none) and what we know of the question."""

    question_id: str
    prediction: str | None
    gt_answer: str
    options: tuple[str, ...] = ()
    dataset: str = UNKNOWN
    modality: str = UNKNOWN
    question_type: str = UNKNOWN


@dataclass(frozen=True)
class Tally:
    """Correct out of total."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        """Fraction correct (0.0 for an empty tally)."""
        return self.correct / self.total if self.total else 0.0

    def add(self, ok: bool) -> "Tally":
        return Tally(self.correct + int(ok), self.total + 1)


@dataclass(frozen=True)
class ProtocolScore:
    """Scores of one protocol: overall, broken down three ways, and macro-F1 over the gold answers."""

    protocol: str
    overall: Tally
    by_dataset: dict[str, Tally]
    by_modality: dict[str, Tally]
    by_question_type: dict[str, Tally]
    macro_f1: float
    no_answer: int = 0  # items whose answer was missing or (strict) resolved to no single option


@dataclass(frozen=True)
class ScoreReport:
    """All protocols' scores plus the accounting of what could not be scored as given."""

    scores: tuple[ProtocolScore, ...]
    num_items: int
    unanswered: int = 0  # test records without a prediction (scored as wrong)
    unmatched_predictions: int = 0  # predictions whose id is not in the test set (not scored)
    problems: tuple[str, ...] = field(default=())  # unreadable lines, duplicate ids, ...

    def protocol(self, name: str) -> ProtocolScore:
        """The score of one protocol by name."""
        for score in self.scores:
            if score.protocol == name:
                return score
        raise KeyError(f"protocol '{name}' was not scored; scored: {[s.protocol for s in self.scores]}")


def dataset_of(question_id: str) -> str:
    """OmniMedVQA's source dataset: the question id before its last '_' ("Chest CT Scan_0042")."""
    return question_id.rsplit("_", 1)[0] if "_" in question_id else UNKNOWN


def _label(item: EvalItem, protocol: str) -> tuple[str, str | None]:
    """(gold label, predicted label) of one item under a protocol; None means no valid prediction."""
    if protocol == "paper":
        return normalize_text(item.gt_answer), None if item.prediction is None else normalize_text(item.prediction)
    gold = item.gt_answer if item.gt_answer in item.options else normalize_text(item.gt_answer)
    if item.prediction is None:
        return gold, None
    return gold, extract_answer(item.prediction, item.options)


def is_correct(item: EvalItem, protocol: str) -> bool:
    """Whether one item is answered correctly under `protocol` ('paper' or 'strict')."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown scoring protocol '{protocol}'; use one of {PROTOCOLS}")
    gold, pred = _label(item, protocol)
    return pred is not None and pred == gold


def macro_f1(golds: Sequence[str], preds: Sequence[str | None]) -> float:
    """Unweighted mean over gold classes of per-class F1 (a None or off-class prediction is a miss)."""
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    for g, p in zip(golds, preds, strict=True):
        if p == g:
            tp[g] += 1
        else:
            fn[g] += 1
            if p is not None:
                fp[p] += 1
    classes = set(golds)
    if not classes:
        return 0.0
    f1s = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in classes]
    return sum(f1s) / len(f1s)


def _breakdown(items: Sequence[EvalItem], oks: Sequence[bool], key: Callable[[EvalItem], str]) -> dict[str, Tally]:
    out: dict[str, Tally] = defaultdict(Tally)
    for item, ok in zip(items, oks):
        out[key(item)] = out[key(item)].add(ok)
    return dict(sorted(out.items()))


def score_items(items: Sequence[EvalItem], protocols: Iterable[str] = PROTOCOLS) -> tuple[ProtocolScore, ...]:
    """Score items under each protocol."""
    scores = []
    for protocol in protocols:
        labels = [_label(i, protocol) for i in items] if protocol in PROTOCOLS else None
        if labels is None:
            raise ValueError(f"unknown scoring protocol '{protocol}'; use one of {PROTOCOLS}")
        oks = [p is not None and p == g for g, p in labels]
        scores.append(ProtocolScore(
            protocol=protocol,
            overall=Tally(sum(oks), len(oks)),
            by_dataset=_breakdown(items, oks, lambda i: i.dataset),
            by_modality=_breakdown(items, oks, lambda i: i.modality),
            by_question_type=_breakdown(items, oks, lambda i: i.question_type),
            macro_f1=macro_f1([g for g, _ in labels], [p for _, p in labels]),
            no_answer=sum(p is None for _, p in labels),
        ))
    return tuple(scores)


def score_samples(samples: Sequence[Sample], completions: Sequence[str]) -> tuple[ProtocolScore, ...]:
    """Score a solver's completions on our own `Sample`s (modality and task type from the samples)."""
    if len(samples) != len(completions):
        raise ValueError(f"score_samples: {len(samples)} samples but {len(completions)} completions")
    items = [EvalItem(question_id=s.sample_id, prediction=c, gt_answer=s.answer, options=s.options,
                      dataset=s.dataset or UNKNOWN, modality=s.modality.value, question_type=s.task_type.value)
             for s, c in zip(samples, completions)]
    return score_items(items)


def _read_records(path: Path, what: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """Records of a JSON-lines file or a JSON list, with the line number of each; bad lines reported."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); expected a list of records or JSON lines") from None
        return [(i + 1, r) for i, r in enumerate(data) if isinstance(r, dict)], [
            f"{path}: record {i + 1} is not an object" for i, r in enumerate(data) if not isinstance(r, dict)]
    records, problems = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not valid JSON ({exc.msg})")
            continue
        if isinstance(record, dict):
            records.append((n, record))
        else:
            problems.append(f"{path}:{n}: not a JSON object")
    return records, problems


def _required_str(record: dict, key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def read_predictions(path: str | Path) -> tuple[dict[str, EvalItem], list[str]]:
    """OmniMedVQA-style predictions (question_id, model_answer, gt_answer, ...) keyed by question id.

    A record without a string question_id or gt_answer, or with a repeated id, is reported in the
    problems list and not scored; a null model_answer counts as no answer (wrong).
    """
    path = Path(path)
    records, problems = _read_records(path, "predictions")
    items: dict[str, EvalItem] = {}
    for n, r in records:
        qid, gt = _required_str(r, "question_id"), _required_str(r, "gt_answer")
        answer = r.get("model_answer")
        if qid is None or gt is None or not (answer is None or isinstance(answer, str)):
            problems.append(f"{path}:{n}: needs string 'question_id', 'gt_answer' and 'model_answer'; not scored")
            continue
        if qid in items:
            problems.append(f"{path}:{n}: question_id {qid!r} repeats an earlier line; the first is scored")
            continue
        items[qid] = EvalItem(question_id=qid, prediction=answer, gt_answer=gt, dataset=dataset_of(qid))
    return items, problems


def read_test_items(path: str | Path) -> tuple[list[EvalItem], list[str]]:
    """OmniMedVQA-format test records (question_id, gt_answer, options, question_type, modality_type,
    dataset) as unanswered items.

    Reads only the fields scoring needs, itself: the dataset readers of data/formats.py did not exist
    when this was written (and scoring should not need images or paths to resolve).
    """
    path = Path(path)
    records, problems = _read_records(path, "test")
    items: list[EvalItem] = []
    for n, r in records:
        qid, gt, options = _required_str(r, "question_id"), _required_str(r, "gt_answer"), r.get("options")
        if qid is None or gt is None or not isinstance(options, list):
            problems.append(f"{path}:{n}: needs string 'question_id', 'gt_answer' and a list 'options'; skipped")
            continue
        items.append(EvalItem(
            question_id=qid, prediction=None, gt_answer=gt, options=tuple(str(o) for o in options),
            dataset=_required_str(r, "dataset") or dataset_of(qid),
            modality=_required_str(r, "modality_type") or UNKNOWN,
            question_type=_required_str(r, "question_type") or UNKNOWN,
        ))
    return items, problems


def score_files(predictions: str | Path, test: str | Path | None = None) -> ScoreReport:
    """Score a predictions file; with the test file, score exactly the test set under both protocols
    (an unanswered test question is wrong), else every prediction under the paper protocol."""
    preds, problems = read_predictions(predictions)
    if test is None:
        items = list(preds.values())
        return ScoreReport(scores=score_items(items, ("paper",)), num_items=len(items), problems=tuple(problems))
    tests, test_problems = read_test_items(test)
    problems += test_problems
    seen: set[str] = set()
    items = []
    for t in tests:
        if t.question_id in seen:
            problems.append(f"{test}: question_id {t.question_id!r} appears twice; scored once")
            continue
        seen.add(t.question_id)
        p = preds.get(t.question_id)
        items.append(EvalItem(t.question_id, None if p is None else p.prediction, t.gt_answer, t.options,
                              t.dataset, t.modality, t.question_type))
        if p is not None and normalize_text(p.gt_answer) != normalize_text(t.gt_answer):
            problems.append(f"{t.question_id}: gt_answer differs between predictions and test file; the test file's is used")
    return ScoreReport(
        scores=score_items(items, PROTOCOLS), num_items=len(items),
        unanswered=sum(i.prediction is None for i in items),
        unmatched_predictions=sum(qid not in seen for qid in preds), problems=tuple(problems),
    )
