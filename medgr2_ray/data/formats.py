"""Readers for medical VQA benchmark layouts into `types.Sample`.

- OmniMedVQA: JSON array (or JSONL) of {dataset, question_id, question_type, question, gt_answer,
  image_path, modality_type, options | option_A..option_E}; image paths relative to the folder that
  holds `Images/`.
- VQA-RAD: the public JSON array {qid, image_name, image_organ, question, answer, answer_type,
  question_type, ...}; images in a folder of `image_name`s.
- SLAKE: {img_id, img_name, question, answer, q_lang, modality, content_type, answer_type, qid};
  images under `imgs/`. Non-English records are filtered (and reported) unless `language=None`.
- PathVQA: JSON/JSONL {image, question, answer[, id]}. The original release ships pickles, which can
  run code when loaded, so .pkl files are refused with a note on converting them once.
- PMC-VQA: CSV with Figure_path, Question, Answer, Choice A..D, Answer_label; images under `images/`.

Every reader takes `image_root` (where images live; checked only with `require_images=True`, since
benchmark images are often fetched separately) and `errors`: None raises on the first bad record
(message names file, record, field); a list collects `RecordError`s and reading goes on.
No Ray.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from medgr2_ray.data.store import DataFormatError, RecordError
from medgr2_ray.data.vocab import modality_from_text, parse_modality
from medgr2_ray.types import Modality, Provenance, Sample, TaskType

_YES_NO = ("yes", "no")


def _load_records(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON array, a JSON object holding one array, or JSONL."""
    if not path.is_file():
        raise DataFormatError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): see store.read_samples
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataFormatError(f"{path}:{lineno}: neither a JSON document nor JSONL ({exc.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataFormatError(f"{path}: expected a list of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a list of records, got {type(data).__name__}")
    return data


def _field(record: dict[str, Any], key: str, where: str, *, allow_number: bool = False) -> str:
    """A required non-empty string field (numbers accepted and stringified where answers may be numbers)."""
    if key not in record or record[key] is None:
        raise DataFormatError(f"{where}: field '{key}' is missing", key)
    value = record[key]
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{where}: field '{key}' must be a non-empty string, got {value!r}", key)
    return value.strip()


def _image_path(rel: str, image_root: Path | None, require: bool, where: str, hint: str) -> str:
    """The image path to store; with `require`, it must exist (error says which root to pass)."""
    path = Path(rel) if image_root is None else image_root / rel
    if require and not path.is_file():
        raise DataFormatError(f"{where}: image '{rel}' not found at {path}; pass image_root= {hint}", "image")
    return str(path)


def _read(src: Path, records: list[Any], parse: Callable[[dict[str, Any], str], Sample | None],
          errors: list[RecordError] | None, unit: str = "record", first: int = 0) -> list[Sample]:
    """Parse every record; bad ones raise (errors=None) or are collected. Duplicate ids are errors too.

    Records are numbered from `first` (0 for JSON arrays; 2 for CSV rows, counting the header line).
    """
    out: list[Sample] = []
    seen: set[str] = set()
    for index, record in enumerate(records, first):
        where = f"{src}: {unit} {index}"
        try:
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: a record must be an object", "record")
            sample = parse(record, where)
            if sample is None:
                continue
            if sample.sample_id in seen:
                raise DataFormatError(f"{where}: duplicate id {sample.sample_id!r}", "id")
            seen.add(sample.sample_id)
            out.append(sample)
        except DataFormatError as exc:
            if errors is None:
                raise
            errors.append(RecordError(str(src), index, exc.field or "record", str(exc)))
    return out


# ------------------------------------------------------------------------------------------ OmniMedVQA


def _omni_options(record: dict[str, Any], where: str) -> tuple[str, ...]:
    if isinstance(record.get("options"), list):
        options = record["options"]
    else:
        options = [record[k] for k in ("option_A", "option_B", "option_C", "option_D", "option_E")
                   if record.get(k) not in (None, "")]
    if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataFormatError(f"{where}: field 'options' must hold >= 2 non-empty strings "
                              f"(an 'options' list or option_A, option_B, ...)", "options")
    return tuple(o.strip() for o in options)


def read_omnimedvqa(path: str | Path, *, image_root: str | Path | None = None,
                    require_images: bool = False, errors: list[RecordError] | None = None) -> list[Sample]:
    """OmniMedVQA QA records -> Samples (sample_id = question_id, image_id = the record's image_path).

    A record whose modality_type is null takes the modality most records of its `dataset` have
    (OmniMedVQA's datasets are single-modality); with none to go by it is Other.
    """
    root = None if image_root is None else Path(image_root)
    unset: set[str] = set()  # question ids whose modality_type is null

    def parse(record: dict[str, Any], where: str) -> Sample:
        qid = _field(record, "question_id", where)
        where = f"{where} (question_id {qid})"
        options = _omni_options(record, where)
        answer = _field(record, "gt_answer", where)
        if answer not in options:
            raise DataFormatError(f"{where}: field 'gt_answer' {answer!r} is not one of the options {options}",
                                  "gt_answer")
        qtype = _field(record, "question_type", where)
        try:
            task = TaskType(qtype)
        except ValueError:
            raise DataFormatError(f"{where}: field 'question_type' {qtype!r} is not one of "
                                  f"{[t.value for t in TaskType]}", "question_type") from None
        raw_modality = record.get("modality_type")
        if raw_modality in (None, ""):
            unset.add(qid)
        modality = Modality.OTHER if qid in unset else parse_modality(raw_modality, field=where)
        rel = _field(record, "image_path", where)
        return Sample(sample_id=qid, image_id=rel,
                      image_path=_image_path(rel, root, require_images, where, "(the folder holding 'Images/')"),
                      question=_field(record, "question", where), options=options, answer=answer,
                      task_type=task, modality=modality, dataset=str(record.get("dataset") or ""),
                      provenance=Provenance(producer="dataset:omnimedvqa"))

    src = Path(path)
    return _fill_dataset_modality(_read(src, _load_records(src), parse, errors), unset)


def _fill_dataset_modality(samples: list[Sample], unset: set[str]) -> list[Sample]:
    """Give records without modality_type their dataset's majority modality (ties: by name)."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        if s.sample_id not in unset:
            votes[s.dataset][s.modality.value] += 1
    out = []
    for s in samples:
        if s.sample_id in unset and votes[s.dataset]:
            top = sorted(votes[s.dataset].items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            s = replace(s, modality=Modality(top))
        out.append(s)
    return out


# ------------------------------------------------------------------------------- VQA-RAD, SLAKE, PathVQA

_VQARAD_TASKS = {"MODALITY": TaskType.MODALITY, "ORGAN": TaskType.ANATOMY, "PRES": TaskType.DIAGNOSIS,
                 "ABN": TaskType.DIAGNOSIS, "SIZE": TaskType.GRADING}
_SLAKE_TASKS = {"modality": TaskType.MODALITY, "organ": TaskType.ANATOMY, "abnormality": TaskType.DIAGNOSIS}


def guess_task_type(question: str) -> TaskType:
    """Keyword guess for layouts without a question type (PathVQA, PMC-VQA)."""
    q = question.lower()
    if re.search(r"modality|imaging (technique|method)|type of (scan|imaging)|what kind of image", q):
        return TaskType.MODALITY
    if re.search(r"\borgan\b|body part|which part of the body|anatomical (region|structure)", q):
        return TaskType.ANATOMY
    if re.search(r"grade|stage|severity|how severe", q):
        return TaskType.GRADING
    if re.search(r"diagnos|disease|abnormal|lesion|tumou?r|malignan|patholog|finding", q):
        return TaskType.DIAGNOSIS
    return TaskType.BIO_ATTRIBUTES


def _free_or_yes_no(answer: str) -> tuple[tuple[str, ...], str]:
    """Closed yes/no answers become a two-option question; anything else stays free text."""
    lowered = answer.strip().lower()
    return (_YES_NO, lowered) if lowered in _YES_NO else ((), answer.strip())


def _answer_modality(task: TaskType, answer: str) -> Modality:
    """For modality questions the answer names the modality; otherwise these layouts do not say."""
    found = modality_from_text(answer) if task == TaskType.MODALITY else None
    return found or Modality.OTHER


def read_vqa_rad(path: str | Path, *, image_root: str | Path | None = None, require_images: bool = False,
                 errors: list[RecordError] | None = None) -> list[Sample]:
    """VQA-RAD's public JSON -> Samples (yes/no answers get options ('yes', 'no'))."""
    root = None if image_root is None else Path(image_root)

    def parse(record: dict[str, Any], where: str) -> Sample:
        qid = _field(record, "qid", where, allow_number=True)
        where = f"{where} (qid {qid})"
        qtype = str(record.get("question_type") or "OTHER").split(",")[0].strip().upper()
        task = _VQARAD_TASKS.get(qtype, TaskType.BIO_ATTRIBUTES)
        options, answer = _free_or_yes_no(_field(record, "answer", where, allow_number=True))
        rel = _field(record, "image_name", where)
        return Sample(sample_id=f"vqarad-{qid}", image_id=rel,
                      image_path=_image_path(rel, root, require_images, where, "(the VQA_RAD Image Folder)"),
                      question=_field(record, "question", where), options=options, answer=answer,
                      task_type=task, modality=_answer_modality(task, answer), dataset="VQA-RAD",
                      provenance=Provenance(producer="dataset:vqa-rad"))

    src = Path(path)
    return _read(src, _load_records(src), parse, errors)


def read_slake(path: str | Path, *, image_root: str | Path | None = None, require_images: bool = False,
               language: str | None = "en", errors: list[RecordError] | None = None) -> list[Sample]:
    """SLAKE's JSON -> Samples. Records in another language are skipped; with an `errors` list each
    skipped one is reported there (field 'q_lang'), so the count is never lost."""
    root = None if image_root is None else Path(image_root)
    filtered: list[RecordError] = []

    def parse(record: dict[str, Any], where: str) -> Sample | None:
        qid = _field(record, "qid", where, allow_number=True)
        where = f"{where} (qid {qid})"
        lang = str(record.get("q_lang") or "en")
        if language is not None and lang != language:
            filtered.append(RecordError(str(path), -1, "q_lang", f"{where}: filtered, language {lang!r}"))
            return None
        task = _SLAKE_TASKS.get(str(record.get("content_type") or "").lower(), TaskType.BIO_ATTRIBUTES)
        options, answer = _free_or_yes_no(_field(record, "answer", where, allow_number=True))
        rel = "imgs/" + _field(record, "img_name", where)
        return Sample(sample_id=f"slake-{qid}", image_id=rel,
                      image_path=_image_path(rel, root, require_images, where, "(the Slake1.0 folder)"),
                      question=_field(record, "question", where), options=options, answer=answer,
                      task_type=task, modality=parse_modality(_field(record, "modality", where), field=where),
                      dataset="SLAKE", provenance=Provenance(producer="dataset:slake"))

    samples = _read(Path(path), _load_records(Path(path)), parse, errors)
    if errors is not None:
        errors.extend(filtered)
    return samples


def read_pathvqa(path: str | Path, *, image_root: str | Path | None = None, require_images: bool = False,
                 errors: list[RecordError] | None = None) -> list[Sample]:
    """PathVQA as JSON/JSONL {image, question, answer[, id]} -> Samples (modality Histopathology)."""
    src = Path(path)
    if src.suffix.lower() in (".pkl", ".pickle"):
        raise DataFormatError(f"{src}: PathVQA's .pkl files are Python pickles, which can run code when "
                              "loaded, so they are not read. Convert them once, in an environment you trust, "
                              "to JSONL with fields image, question, answer.")
    root = None if image_root is None else Path(image_root)

    def parse(record: dict[str, Any], where: str) -> Sample:
        question = _field(record, "question", where)
        rel = _field(record, "image", where)
        options, answer = _free_or_yes_no(_field(record, "answer", where, allow_number=True))
        ident = str(record.get("id") or record.get("qid") or where.rsplit(" ", 1)[-1])
        return Sample(sample_id=f"pathvqa-{ident}", image_id=rel,
                      image_path=_image_path(rel, root, require_images, where, "(the PathVQA images folder)"),
                      question=question, options=options, answer=answer, task_type=guess_task_type(question),
                      modality=Modality.HISTOPATHOLOGY, dataset="PathVQA",
                      provenance=Provenance(producer="dataset:pathvqa"))

    return _read(src, _load_records(src), parse, errors)


# ------------------------------------------------------------------------------------------------ PMC-VQA

_CHOICE = re.compile(r"^\s*([A-Z])\s*[:.]\s*(.*\S)\s*$", re.S)


def read_pmc_vqa(path: str | Path, *, image_root: str | Path | None = None, require_images: bool = False,
                 errors: list[RecordError] | None = None) -> list[Sample]:
    """PMC-VQA's CSV (Figure_path, Question, Answer, Choice A..D, Answer_label) -> Samples."""
    src = Path(path)
    if not src.is_file():
        raise DataFormatError(f"{src} does not exist")
    root = None if image_root is None else Path(image_root)
    with src.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))

    def parse(record: dict[str, Any], where: str) -> Sample:
        options = []
        for letter in "ABCD":
            raw = _field(record, f"Choice {letter}", where)
            match = _CHOICE.match(raw)
            options.append(match.group(2) if match else raw)
        label = _field(record, "Answer_label", where).upper()
        if label not in "ABCD" or len(label) != 1:
            raise DataFormatError(f"{where}: field 'Answer_label' must be A, B, C or D, got {label!r}",
                                  "Answer_label")
        answer = options["ABCD".index(label)]
        question = _field(record, "Question", where)
        task = guess_task_type(question)
        rel = "images/" + _field(record, "Figure_path", where)
        ident = str(record.get("index") or where.rsplit(" ", 1)[-1])  # the CSV row number
        return Sample(sample_id=f"pmcvqa-{ident}", image_id=rel,
                      image_path=_image_path(rel, root, require_images, where, "(the PMC-VQA folder)"),
                      question=question, options=tuple(options), answer=answer, task_type=task,
                      modality=_answer_modality(task, answer), dataset="PMC-VQA",
                      provenance=Provenance(producer="dataset:pmc-vqa"))

    return _read(src, rows, parse, errors, unit="row", first=2)
