"""Fixtures for the model tests: one tiny model built offline per session and a real CT image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import ModelConfig
from medgr2_ray.models.loading import LoadedVLM, load_vlm
from medgr2_ray.models.tiny import ensure_model_dir

torch.set_num_threads(1)


def ct_rgb() -> np.ndarray:
    """pydicom-data's CT_small.dcm, in Hounsfield units, soft-tissue window (40/400), as uint8 RGB."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    grey = np.clip((hu - (40 - 200)) / 400.0, 0.0, 1.0) * 255.0
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL directory built with the default TinyModelConfig and seed 0."""
    return ensure_model_dir(ModelConfig(), tmp_path_factory.mktemp("cache"), seed=0, role="policy")


@pytest.fixture(scope="session")
def loaded(tiny_dir: Path) -> LoadedVLM:
    """The tiny model loaded through the same path as a real checkpoint."""
    return load_vlm(tiny_dir)


@pytest.fixture(scope="session")
def ct_image() -> np.ndarray:
    """A real CT slice (128x128) as RGB uint8."""
    return ct_rgb()
