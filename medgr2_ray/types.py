"""The vocabulary of medgr2_ray: frozen, typed messages passed between every part of the system.

Everything that crosses a process boundary (driver <-> actors) is one of these dataclasses, never a
tuple or a dict keyed by strings. Nothing here imports Ray, torch or a model library, so the types can
be used (and pickled) anywhere. Arrays are numpy: they travel through the Ray object store zero-copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


class Modality(str, enum.Enum):
    """Imaging modality, a controlled vocabulary aligned with OmniMedVQA's modality names."""

    CT = "CT"
    MR = "MR"
    XRAY = "X-Ray"
    ULTRASOUND = "Ultrasound"
    NUCLEAR = "Nuclear Medicine"  # PET and SPECT and planar scintigraphy
    FUNDUS = "Fundus Photography"
    OCT = "OCT"
    HISTOPATHOLOGY = "Histopathology"
    MICROSCOPY = "Microscopy"
    DERMOSCOPY = "Dermoscopy"
    ENDOSCOPY = "Endoscopy"
    OTHER = "Other"


class TaskType(str, enum.Enum):
    """Question type, as OmniMedVQA names them."""

    MODALITY = "Modality Recognition"
    ANATOMY = "Anatomy Identification"
    DIAGNOSIS = "Disease Diagnosis"
    GRADING = "Lesion Grading"
    BIO_ATTRIBUTES = "Other Biological Attributes"


class PromptStrategy(str, enum.Enum):
    """How the generator is prompted to write a sample (MedGR² section on generation)."""

    DIRECT = "direct"
    STEP_BY_STEP = "step_by_step"
    META_COGNITIVE = "meta_cognitive"


@dataclass(frozen=True)
class MedImage:
    """One de-identified medical image in a pool: an RGB uint8 PNG on disk plus what we know of it.

    `study_id` groups images of one patient/study so that splits never leak slices of one study
    into both train and test.
    """

    image_id: str
    path: str  # RGB uint8 PNG, relative to the pool directory or absolute
    modality: Modality
    anatomy: str
    source: str  # where it came from, e.g. "pydicom-data:CT_small.dcm"
    licence: str
    study_id: str
    width: int
    height: int
    extra: dict[str, str] = field(default_factory=dict)  # de-identified tags, frame index, window ...


@dataclass(frozen=True)
class Provenance:
    """Who produced a sample, how, and what became of it."""

    producer: str  # "template", "generator", "dataset:<name>", "perturb:<kind>"
    model_version: int = -1  # generator weight version; -1 when no model produced it
    round: int = 0
    prompt_strategy: PromptStrategy | None = None
    reward: float | None = None  # reward-model score in [-6, 10]
    selected: bool | None = None  # the selection decision, once made
    parent_id: str | None = None  # the sample this one was derived from (perturbations)
    rm_version: int = -1  # reward-model weight version that gave `reward`; -1 when unscored
    reason: str | None = None  # why selection rejected it (a selection reason), None when kept or undecided


@dataclass(frozen=True)
class Sample:
    """A medical image-question-answer sample: what the generator writes and the solver learns from.

    `answer` is the text of the correct option (an element of `options`) or free text when
    `options` is empty.
    """

    sample_id: str
    image_id: str
    image_path: str
    question: str
    options: tuple[str, ...]
    answer: str
    task_type: TaskType
    modality: Modality
    rationale: str = ""
    dataset: str = ""
    provenance: Provenance = field(default_factory=lambda: Provenance(producer="template"))

    @property
    def answer_letter(self) -> str | None:
        """The option letter (A, B, ...) of the answer, or None for free-text samples."""
        if self.answer not in self.options:
            return None
        return chr(ord("A") + self.options.index(self.answer))

    def with_provenance(self, **changes: Any) -> "Sample":
        """A copy with some provenance fields changed (reward, selected, ...)."""
        return replace(self, provenance=replace(self.provenance, **changes))


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every rollout engine (HF and vLLM interpret them identically)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt for an engine: a user message with zero or more images (RGB uint8 HWC arrays).

    The engine applies the model's chat template; `system` is prepended as a system message when set.
    `sample` carries the sample the prompt was made from, so rewards can be computed from the rollout.
    `image_ids` names the images instead of carrying them: requests that travel between actors carry ids
    only, and the actor that runs a model fills `images` from its own image cache
    (`algo.requests.resolve_images`), so pixels never pass through the driver.
    """

    request_id: str
    prompt: str
    images: tuple[np.ndarray, ...] = ()
    system: str = ""
    sample: Sample | None = None
    image_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rollout:
    """One completion: token ids, text, the behaviour log-probs of the sampled tokens, and the
    weight version of the model that produced it."""

    request_id: str
    index: int  # which of the n samples of the request
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    text: str
    logprobs: np.ndarray  # float32, one per completion token, under the sampling distribution used
    finish_reason: str  # "stop" | "length"
    weight_version: int


@dataclass(frozen=True)
class ScoredGroup:
    """The n rollouts of one request with their scalar rewards: the unit GRPO learns from."""

    group_id: str
    request: GenerationRequest
    rollouts: tuple[Rollout, ...]
    rewards: np.ndarray  # float32, one per rollout

    @property
    def weight_version(self) -> int:
        """The oldest weight version among the rollouts (staleness is measured from it)."""
        return min(r.weight_version for r in self.rollouts)


@dataclass(frozen=True)
class TrainBatch:
    """What the learner consumes for one GRPO step."""

    groups: tuple[ScoredGroup, ...]
    learner_version: int


@dataclass(frozen=True)
class WeightVersion:
    """A published set of weights: `ref` is a Ray ObjectRef to a `FlatWeights` (typed Any so this
    module does not import Ray)."""

    version: int
    ref: Any
    num_bytes: int
    lora_only: bool
    published_at: float


@dataclass(frozen=True)
class TensorSpec:
    """Where one named tensor lives inside a flat buffer."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # in elements of `dtype` within the buffer of that dtype


@dataclass(frozen=True)
class FlatWeights:
    """Named tensors packed into one contiguous numpy buffer per dtype, plus an index.

    This is what travels through the object store: a few large buffers put once and read zero-copy,
    instead of a dict of torch tensors (about 8x slower through `ray.put`, measured).
    """

    buffers: dict[str, np.ndarray]  # dtype name -> 1-D buffer
    index: tuple[TensorSpec, ...]
    lora_only: bool

    @property
    def num_bytes(self) -> int:
        """Total bytes of all buffers."""
        return int(sum(b.nbytes for b in self.buffers.values()))


@dataclass(frozen=True)
class SFTExample:
    """A supervised example: the prompt (with images) and the target completion text."""

    request: GenerationRequest
    target: str


@dataclass(frozen=True)
class RewardExample:
    """A reward-model training example: a rendered (image, question, answer) prompt and its graded
    target score (10 faithful, 6 perturbed, 0 incoherent, -6 irrelevant by default)."""

    request: GenerationRequest
    target: float
    kind: str  # "faithful" | "perturbed" | "incoherent" | "irrelevant" | "policy"


@dataclass(frozen=True)
class RewardObjective:
    """What R trains for beyond the regression: a verifier head (new heads only; a saved head keeps
    its kind) starting at score = low + (high - low) * p(answer), and the weight of its answer term."""

    verifier: bool = False
    answer_loss: float = 0.0
    low: float = -6.0
    high: float = 10.0
