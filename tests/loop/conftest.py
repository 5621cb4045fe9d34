"""Fixtures for the loop tests: a tiny VLM built offline, a format-tuned copy of it, real medical images,
modality questions, and a small loop configuration. Everything runs on the session's real Ray cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import Config, GRPOConfig, LearnerConfig, ModelConfig, load_config
from medgr2_ray.data.decoders import IngestOptions
from medgr2_ray.data.ingest import decode_bytes
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import GenerationRequest, Modality, Sample, SFTExample, TaskType

torch.set_num_threads(1)
OPTIONS = ("CT", "MR", "X-Ray", "Ultrasound")
PHRASES = (
    "Which modality is this? A. CT B. MR C. X-Ray D. Ultrasound. Answer with a letter.",
    "Options: A. CT B. MR C. X-Ray D. Ultrasound. Which one is shown?",
    "Pick the imaging modality (A-D).",
    "What kind of scan is this? Letter only.",
)


def _dicom_rgb(name: str) -> np.ndarray:
    """A pydicom-data file decoded and windowed to uint8 RGB by the project's own ingestion."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file(name))
    return decode_bytes(path.read_bytes(), path.name, IngestOptions(salt=b"loop-tests"))[0].rgb


@pytest.fixture(scope="session")
def questions() -> list[GenerationRequest]:
    """Eight four-option modality questions: four phrasings, each about a real CT and a real MR slice."""
    ct, mr = _dicom_rgb("CT_small.dcm"), _dicom_rgb("MR_small.dcm")
    out = []
    for i in range(8):
        answer = "CT" if i % 2 == 0 else "MR"
        sample = Sample(
            sample_id=f"s{i}", image_id=f"img{i % 2}", image_path="", question=PHRASES[i % 4], options=OPTIONS,
            answer=answer, task_type=TaskType.MODALITY, modality=Modality.CT if answer == "CT" else Modality.MR,
        )
        out.append(GenerationRequest(f"q{i}", PHRASES[i % 4], images=(ct if answer == "CT" else mr,), sample=sample))
    return out


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny Qwen2-VL-architecture model, built offline (seed 0)."""
    return ensure_model_dir(ModelConfig(), tmp_path_factory.mktemp("loop-cache"), seed=0, role="policy")


@pytest.fixture(scope="session")
def format_tuned_dir(policy_dir: Path, questions: list[GenerationRequest], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 as in MedGR²: SFT on uniformly random option letters teaches the answer format, not the
    answer (reward ~0.25 = chance), so GRPO has signal and room to improve."""
    from medgr2_ray.learner.policy import PolicyLearner

    learner = PolicyLearner(policy_dir, ModelConfig(), LearnerConfig(lr=5e-3, micro_batch_size=16), GRPOConfig(), seed=0)
    warm = [SFTExample(q, "ABCD"[(i + i // 2) % 4]) for i, q in enumerate(questions * 2)]
    for _ in range(30):
        learner.sft_step(warm)
    return learner.save_pretrained(tmp_path_factory.mktemp("format-tuned"))


LoopConfig = Callable[..., Config]


@pytest.fixture
def loop_config() -> LoopConfig:
    """`loop_config("grpo.steps=3", ...)`: a small loop on the accuracy reward (no reward model)."""

    def make(*overrides: str) -> Config:
        base = [
            "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=2", "grpo.temperature=1.0",
            "grpo.dynamic_sampling=false", "reward.alpha=0.0", "reward.beta=1.0", "learner.micro_batch_size=16",
            "loop.requests_per_call=1", "loop.poll_s=0.2", "rollout_pool.max_workers=2",
        ]
        return load_config(None, [*base, *overrides])

    return make
