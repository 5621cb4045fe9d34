"""Helpers the HF and vLLM engine tests share (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medgr2_ray.config import LoraConfig
from medgr2_ray.models.loading import apply_lora, load_vlm


def ct_rgb() -> np.ndarray:
    """pydicom-data's CT_small.dcm in a soft-tissue window (40/400 HU) as uint8 RGB."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    grey = (np.clip((hu + 160.0) / 400.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def lora_learner(path: Path, seed: int, lora: LoraConfig) -> torch.nn.Module:
    """A PEFT LoRA model of `path` with non-zero B (as after some training steps)."""
    torch.manual_seed(seed)
    peft_model = apply_lora(load_vlm(path).model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    return peft_model
