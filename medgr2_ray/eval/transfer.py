"""Med-R1's transfer protocols: cross-modality and cross-task accuracy matrices (the pure part).

This module builds the question bank and each protocol's rows and columns, and turns the rows' scores
into the matrix and its markdown table; `loop/transfer.py` fine-tunes and scores a solver per row (one
Ray task each) and writes `runs/<name>/eval/transfer_<protocol>.{json,md}`. No Ray, no torch here.

Med-R1 (Lai et al., 2025) fine-tunes one model per training group and tests each on every group of
OmniMedVQA: cross-modality trains on one imaging modality's questions (all question types) and tests on
every modality; cross-task trains on one question type (all modalities) and tests on every type. The
result is a matrix train-group x test-group; its diagonal is in-domain, the rest out-of-domain.

Here, on template questions from the run's own study split (`loop.cycle.prepare_data`):
- one question bank for both protocols. Training questions come from the training studies, test
  questions from the held-out studies only. A cross-modality row is the bank's questions about images
  of one modality; a cross-task row is the bank's questions of one task type. Rows are the groups with
  both training and held-out questions; a group with only one of them is listed in `skipped` with why.
- the modality-recognition questions of both sides are built by the same function
  (`protocols.modality_question`) with the same option vocabulary: 4 options whose distractors are the
  held-out modalities. So a question of the CT row is word for word the kind of question the CT column
  asks; only the studies differ. The held-out modality questions are exactly the run's standard
  balanced test set.
- what that means for a single-modality row, honestly: its modality questions all have one answer, so
  in-domain (the diagonal) a solver can score 100% on them by learning the answer's name, not the
  image; each column's image-blind bound (100% for a one-modality column of modality questions) says
  so. Off the diagonal the same prior is wrong, and the trained name is among a foreign question's 4
  options 3 times in 4: an off-diagonal cell measures whether the solver reads the image or recites its
  prior. This is also what Med-R1's modality-recognition questions measure in its matrix; the image-
  dependent transfer signal lives in the other task types, which is why every cell also carries its
  accuracy per task (anatomy questions here). We did not drop modality questions from the cross-modality
  protocol: the columns would then not be the run's test set.
- scoring is strict: the option with the highest length-normalised log-likelihood (as `protocols.py`
  does) must equal the answer; greedy exact match (the decoded text's option must equal the answer) is
  reported beside it when asked.
- every row starts from the same untrained solver (a fresh copy of the policy's initial weights) and
  takes the same number of SFT steps, with batches balanced over (modality, task) so a row's larger
  group does not decide what it learns; the untrained solver is scored on every column as the baseline.
What it simplified: one process per row, one rank (Ray Train and LoRA-vs-full choices follow the solver
config, but `learner.num_ranks` is ignored), and only the task types the templates can verify
(modality recognition, anatomy identification).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from medgr2_ray.config import Config
from medgr2_ray.data.images import ImageLookup
from medgr2_ray.eval.protocols import balanced_modality_test, blind_bound, modality_question
from medgr2_ray.types import MedImage, Modality, Sample, TaskType

Protocol = Literal["cross-modality", "cross-task"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
BASELINE = "untrained"


@dataclass(frozen=True)
class TransferSpec:
    """What one protocol trains and tests: a training set per row, one held-out bank split into columns."""

    protocol: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    train: Mapping[str, tuple[Sample, ...]]  # row -> its training questions
    test: tuple[Sample, ...]  # every held-out question; `group_of` says its column
    skipped: Mapping[str, str]  # a group that is no row, and why
    unusable: Mapping[str, int]  # "side task: reason" -> (image, draw) pairs that gave no question, never silent


@dataclass(frozen=True)
class Cell:
    """One solver scored on one column's questions."""

    correct: int
    total: int
    accuracy: float
    greedy_accuracy: float | None
    by_task: Mapping[str, float]


@dataclass(frozen=True)
class RowResult:
    """A solver fine-tuned on one row's questions (or untrained), scored on every column."""

    row: str
    train_samples: int
    steps: int
    final_loss: float
    cells: Mapping[str, Cell]


@dataclass(frozen=True)
class TransferMatrix:
    """The protocol's result: accuracy train-group x test-group, with everything behind the numbers."""

    protocol: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: Mapping[str, Mapping[str, Cell]]  # row -> column -> cell
    baseline: Mapping[str, Cell]  # the untrained solver, per column
    blind_bound: Mapping[str, float]  # per column: the best fixed, image-blind option order
    blind_bound_all: float  # the same over every column at once (one order for the whole test bank)
    train_counts: Mapping[str, int]
    test_counts: Mapping[str, int]
    in_domain: float  # mean diagonal accuracy
    out_of_domain: float  # mean off-diagonal accuracy
    steps: int
    skipped: Mapping[str, str]
    unusable: Mapping[str, int]


def check_protocol(protocol: str) -> Protocol:
    """The protocol name, or a ValueError that names the field and the valid values."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"transfer protocol {protocol!r} is unknown (eval.transfer_protocols / --protocol); "
                         f"use one of {list(PROTOCOLS)}")
    return protocol  # type: ignore[return-value]


def group_of(protocol: str, sample: Sample) -> str:
    """The row/column a question belongs to under `protocol`."""
    return sample.modality.value if check_protocol(protocol) == "cross-modality" else sample.task_type.value


def _template_tasks(tasks: Sequence[str], skipped: dict[str, str]) -> list[TaskType]:
    out = []
    for name in tasks:
        task = TaskType(name)
        if task in (TaskType.MODALITY, TaskType.ANATOMY):
            out.append(task)
        else:
            skipped[name] = "templates cannot verify this task type from image metadata (cycle.tasks)"
    return out


def _question(image: MedImage, task: TaskType, modalities: Sequence[Modality], seed: int, k: int) -> Sample | None:
    from medgr2_ray.data.templates import template_sample

    if task == TaskType.MODALITY:
        return modality_question(image, modalities, seed, k)
    return template_sample(image, task, seed, k, inline_options=False)


def question_bank(train: Sequence[MedImage], test: Sequence[MedImage], modality_test: Sequence[Sample],
                  tasks: Sequence[TaskType], seed: int, per_image: int, per_modality: int
                  ) -> tuple[list[Sample], list[Sample], dict[str, int]]:
    """(training questions, held-out questions, unusable counts) for `tasks`.

    Modality questions on both sides offer the held-out modalities as options (see the module
    docstring); the held-out modality questions are `modality_test`, the run's standard test set.
    Held-out questions of other tasks are balanced by modality like it (`per_modality` each).
    """
    modalities = sorted({i.modality for i in test if i.modality != Modality.OTHER}, key=lambda m: m.value)
    bank: list[Sample] = []
    unusable: Counter[str] = Counter()
    for image in train:
        for task in tasks:
            for k in range(per_image):
                q = _question(image, task, modalities, seed, k)
                if q is None:
                    why = "modality has no held-out images" if task == TaskType.MODALITY else "anatomy not verifiable"
                    unusable[f"train {task.value}: {why}"] += 1
                    continue
                # modality_question names its questions "test-..."; these are training questions
                bank.append(dataclasses.replace(q, sample_id=f"xfer-{task.name.lower()}-{image.image_id}-{k}",
                                                dataset="transfer-train"))
    held_out: list[Sample] = []
    for task in tasks:
        if task == TaskType.MODALITY:
            held_out += modality_test
        else:
            made = balanced_modality_test(test, lambda i, k, t=task: _question(i, t, modalities, seed + 1, k),
                                          per_modality, seed)
            unusable[f"test {task.value}: not verifiable"] += per_modality * len(modalities) - len(made)
            held_out += made
    return bank, held_out, {k: v for k, v in sorted(unusable.items()) if v}


def build_spec(protocol: str, bank: Sequence[Sample], held_out: Sequence[Sample], unusable: Mapping[str, int],
               skipped: Mapping[str, str] | None = None) -> TransferSpec:
    """Group a question bank into the protocol's rows (training sets) and columns (held-out groups)."""
    check_protocol(protocol)
    train: dict[str, list[Sample]] = defaultdict(list)
    for s in bank:
        train[group_of(protocol, s)].append(s)
    columns = tuple(sorted({group_of(protocol, s) for s in held_out}))
    why = dict(skipped or {})
    for group in sorted(train):
        if group not in columns:
            why[group] = f"{len(train[group])} training questions but no held-out ones"
    for group in columns:
        if group not in train:
            why[group] = "held-out questions but no training ones (a column only)"
    rows = tuple(g for g in columns if g in train)
    if len(columns) < 2 or not rows:
        field = "cycle.tasks" if protocol == "cross-task" else "data.pool / data.test_fraction"
        raise ValueError(f"{protocol}: needs >= 2 held-out groups and >= 1 trainable row, got columns "
                         f"{list(columns)} and rows {list(rows)} (check {field}); skipped: {why}")
    return TransferSpec(protocol, rows, columns, {r: tuple(train[r]) for r in rows}, tuple(held_out), why,
                        dict(unusable))


def spec_from_config(cfg: Config, protocol: str, train_images: Sequence[MedImage], test_images: Sequence[MedImage],
                     modality_test: Sequence[Sample]) -> TransferSpec:
    """The protocol's spec for a run's split (the images and test set `prepare_data` gives)."""
    check_protocol(protocol)
    skipped: dict[str, str] = {}
    tasks = _template_tasks(cfg.cycle.tasks, skipped)
    if protocol == "cross-task" and len(tasks) < 2:
        raise ValueError(f"cross-task: cycle.tasks = {cfg.cycle.tasks} gives {len(tasks)} template task type(s); "
                         "it needs two (Modality Recognition and Anatomy Identification)")
    bank, held_out, unusable = question_bank(train_images, test_images, modality_test, tasks, cfg.run.seed,
                                             cfg.cycle.seeds_per_image, cfg.solver.eval_per_modality)
    return build_spec(protocol, bank, held_out, unusable, skipped)


def cells_by_group(protocol: str, test: Sequence[Sample], likely: Sequence[str], greedy: Sequence[str] | None
                   ) -> dict[str, Cell]:
    """Strict accuracy per column (and per task inside it)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(test):
        groups[group_of(protocol, s)].append(i)
    out = {}
    for group, idx in sorted(groups.items()):
        hits = [likely[i] == test[i].answer for i in idx]
        tasks: dict[str, list[bool]] = defaultdict(list)
        for i, h in zip(idx, hits):
            tasks[test[i].task_type.value].append(h)
        g = None if greedy is None else float(np.mean([greedy[i] == test[i].answer for i in idx]))
        out[group] = Cell(int(sum(hits)), len(idx), float(np.mean(hits)), g,
                          {t: float(np.mean(v)) for t, v in sorted(tasks.items())})
    return out


def assemble(spec: TransferSpec, results: Sequence[RowResult], steps: int) -> TransferMatrix:
    """The matrix from the rows' results (one of them the untrained baseline)."""
    by_row = {r.row: r for r in results}
    missing = [r for r in (*spec.rows, BASELINE) if r not in by_row]
    if missing:
        raise ValueError(f"{spec.protocol}: no result for rows {missing}")
    cells = {r: dict(by_row[r].cells) for r in spec.rows}
    diag = [cells[r][r].accuracy for r in spec.rows]
    off = [cells[r][c].accuracy for r in spec.rows for c in spec.columns if c != r]
    test_groups: dict[str, list[Sample]] = defaultdict(list)
    for s in spec.test:
        test_groups[group_of(spec.protocol, s)].append(s)
    return TransferMatrix(
        protocol=spec.protocol, rows=spec.rows, columns=spec.columns, cells=cells,
        baseline=dict(by_row[BASELINE].cells),
        blind_bound={c: blind_bound(test_groups[c]) for c in spec.columns}, blind_bound_all=blind_bound(spec.test),
        train_counts={r: len(spec.train[r]) for r in spec.rows},
        test_counts={c: len(test_groups[c]) for c in spec.columns},
        in_domain=float(np.mean(diag)), out_of_domain=float(np.mean(off)) if off else float("nan"),
        steps=steps, skipped=dict(spec.skipped), unusable=dict(spec.unusable),
    )


def to_json(matrix: TransferMatrix, seconds: float | None = None) -> dict[str, Any]:
    """JSON-ready dict (what `eval/transfer_<protocol>.json` holds)."""
    out = dataclasses.asdict(matrix)
    out["rows"], out["columns"] = list(matrix.rows), list(matrix.columns)
    if seconds is not None:
        out["seconds"] = seconds
    return out


def markdown(matrix: TransferMatrix) -> str:
    """The matrix as a markdown table: rows = training group, columns = held-out group."""
    head = "| train \\ test | n train | " + " | ".join(matrix.columns) + " |"
    lines = [f"# {matrix.protocol} transfer ({matrix.steps} SFT steps per row)", "",
             "Strict length-normalised likelihood accuracy (greedy exact match in brackets); diagonal in bold.", "",
             head, "|" + "---|" * (len(matrix.columns) + 2)]

    def fmt(cell: Cell, bold: bool = False) -> str:
        text = f"{cell.accuracy:.0%}" + ("" if cell.greedy_accuracy is None else f" ({cell.greedy_accuracy:.0%})")
        return f"**{text}**" if bold else text

    for r in matrix.rows:
        lines.append(f"| {r} | {matrix.train_counts[r]} | "
                     + " | ".join(fmt(matrix.cells[r][c], c == r) for c in matrix.columns) + " |")
    lines.append(f"| {BASELINE} | 0 | " + " | ".join(fmt(matrix.baseline[c]) for c in matrix.columns) + " |")
    lines.append("| image-blind bound | - | " + " | ".join(f"{matrix.blind_bound[c]:.0%}" for c in matrix.columns) + " |")
    lines.append("| n test | - | " + " | ".join(str(matrix.test_counts[c]) for c in matrix.columns) + " |")
    lines += ["", f"In-domain (diagonal) mean {matrix.in_domain:.1%}; out-of-domain mean {matrix.out_of_domain:.1%}; "
              f"one image-blind option order over all columns: {matrix.blind_bound_all:.1%}."]
    if matrix.skipped:
        lines.append("Not a row: " + "; ".join(f"{k}: {v}" for k, v in matrix.skipped.items()) + ".")
    if matrix.unusable:
        lines.append("Question draws that gave no question: " + "; ".join(f"{k}: {v}" for k, v in matrix.unusable.items()) + ".")
    lines += _task_tables(matrix)
    return "\n".join(lines) + "\n"


def _task_tables(matrix: TransferMatrix) -> list[str]:
    """Cross-modality cells split by task (likelihood accuracy): the image-dependent part is visible."""
    tasks = sorted({t for row in matrix.cells.values() for c in row.values() for t in c.by_task})
    if len(tasks) < 2 or matrix.protocol != "cross-modality":  # cross-task columns are the tasks already
        return []
    out = []
    for task in tasks:
        out += ["", f"{task} questions only:", "", "| train \\ test | " + " | ".join(matrix.columns) + " |",
                "|" + "---|" * (len(matrix.columns) + 1)]
        for r, row in [*((r, matrix.cells[r]) for r in matrix.rows), (BASELINE, matrix.baseline)]:
            vals = [f"{row[c].by_task[task]:.0%}" if task in row[c].by_task else "-" for c in matrix.columns]
            out.append(f"| {r} | " + " | ".join(vals) + " |")
    return out


def run_row(cfg: Config, model_dir: str | Path, protocol: str, row: str, train: Sequence[Sample],
            test: Sequence[Sample], lookup: ImageLookup, steps: int, greedy: bool) -> RowResult:
    """Fine-tune a fresh solver on `train` (no steps for the untrained baseline: empty `train`) and
    score it on every held-out question, grouped into the protocol's columns."""
    from medgr2_ray.learner.solver import new_solver, predict, sft_solver

    learner = new_solver(cfg, model_dir, steps)
    losses = sft_solver(learner, train, lookup, steps, cfg.solver.sft_batch_size, cfg.run.seed,
                        cfg.solver.augment, cfg.solver.augmentation) if train else []
    likely, greedy_picks = predict(learner, cfg, test, lookup, greedy)
    final = float(np.nanmean(losses[-10:])) if losses else float("nan")
    return RowResult(row, len(train), len(losses), final, cells_by_group(protocol, test, likely, greedy_picks))
