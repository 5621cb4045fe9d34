"""Load a VLM directory (tiny or real) through one `from_pretrained` path, and add LoRA adapters.

`load_vlm` is the only place models, tokenizers and image processors are loaded, for a tiny model
built by `models/tiny.py` and for a real Qwen2-VL / Qwen2.5-VL directory alike. Weights are read
from safetensors only (`use_safetensors=True`: a pickled checkpoint is refused rather than
unpickled), and model repositories run no code of their own unless the config says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, PreTrainedModel

from medgr2_ray.config import LoraConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedVLM:
    """A vision-language model with the tokenizer and image processor that go with it."""

    model: PreTrainedModel
    tokenizer: Any  # a transformers tokenizer (PreTrainedTokenizerBase)
    image_processor: Any  # a Qwen2-VL-style image processor (returns pixel_values + image_grid_thw)
    path: str


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a config dtype name."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype '{name}'; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def load_image_processor(path: str | Path, trust_remote_code: bool = False) -> Any:
    """The image processor of a model directory.

    Without torchvision, `AutoImageProcessor` may pick the torchvision backend and fail; then the
    PIL backend of the same class is used, which reads the same preprocessor_config.json.
    """
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (ImportError, ValueError, OSError) as exc:
        from transformers import Qwen2VLImageProcessorPil

        log.debug("AutoImageProcessor failed for %s (%s); using Qwen2VLImageProcessorPil", path, exc)
        return Qwen2VLImageProcessorPil.from_pretrained(str(path))


def load_vlm(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedVLM:
    """Load model, tokenizer and image processor from a local Hugging Face directory (or hub id)."""
    where = str(path)
    if Path(where).expanduser().exists():
        where = str(Path(where).expanduser())
        if not (Path(where) / "config.json").is_file():
            raise FileNotFoundError(
                f"'{where}' has no config.json: it is not a Hugging Face model directory "
                "(build a tiny one with `medgr2 models build-tiny`)"
            )
    model = AutoModelForImageTextToText.from_pretrained(
        where, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Left padding needs a pad id; its embedding is never attended to (attention_mask is 0 there).
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedVLM(
        model=model, tokenizer=tokenizer,
        image_processor=load_image_processor(where, trust_remote_code), path=where,
    )


def apply_lora(model: PreTrainedModel, lora: LoraConfig) -> Any:
    """Wrap `model` with PEFT LoRA adapters on `lora.target_modules` (returns a PeftModel).

    The caller seeds torch beforehand when the adapter initialisation must be reproducible
    (PEFT draws A at random and sets B to zero, so the wrapped model starts equal to the base).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), bias="none",
    )
    return get_peft_model(model, peft_config)
