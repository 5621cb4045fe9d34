"""Fixtures for the learner tests: one tiny VLM built offline per session, real medical images
decoded by the project's own ingestion code, and small prompt sets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import ModelConfig
from medgr2_ray.data.decoders import IngestOptions
from medgr2_ray.data.ingest import decode_bytes
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.types import GenerationRequest

torch.set_num_threads(1)


def medical_image(name: str) -> np.ndarray:
    """A pydicom-data test file (CT_small.dcm, MR_small.dcm) decoded and windowed to uint8 RGB."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file(name))
    return decode_bytes(path.read_bytes(), path.name, IngestOptions(salt=b"learner-tests"))[0].rgb


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL directory (default TinyModelConfig, seed 0)."""
    return ensure_model_dir(ModelConfig(), tmp_path_factory.mktemp("learner-cache"), seed=0, role="policy")


@pytest.fixture(scope="session")
def dicom_rgb() -> Callable[[str], np.ndarray]:
    """`medical_image` for tests that need other pydicom-data files."""
    return medical_image


@pytest.fixture(scope="session")
def ct_image() -> np.ndarray:
    return medical_image("CT_small.dcm")


@pytest.fixture(scope="session")
def mr_image() -> np.ndarray:
    return medical_image("MR_small.dcm")


@pytest.fixture(scope="session")
def mixed_requests(ct_image: np.ndarray, mr_image: np.ndarray) -> list[GenerationRequest]:
    """Prompts of different lengths, with an image, with another image size, and text only."""
    return [
        GenerationRequest("ct", "Which modality is this image? Answer with one word.", images=(ct_image,)),
        GenerationRequest("text", "Name one organ of the chest."),
        GenerationRequest("mr", "Describe it.", images=(mr_image,), system="You are a radiologist."),
    ]
