"""Offline tiny Qwen2-VL models: built from a `TinyModelConfig`, saved as ordinary Hugging Face dirs.

A tiny model directory looks exactly like a downloaded Qwen2-VL checkpoint (config.json,
model.safetensors, generation_config.json, tokenizer files, preprocessor_config.json), so every
later stage loads it through the same `load_vlm` path as a real Qwen2.5-VL-3B directory.

Image size: the resize to about `image_size` x `image_size` pixels is baked into the saved image
processor (min_pixels = 56², max_pixels = image_size²), not applied by our code, so a real model
keeps the resize policy of its own preprocessor_config.json.

The processor object itself is not saved: without torchvision `AutoProcessor` cannot load a Qwen2-VL
processor, so the tokenizer and the (PIL) image processor are saved and loaded separately.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from medgr2_ray.config import ModelConfig, TinyModelConfig
from medgr2_ray.models.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

ROLES = ("policy", "generator", "reward")
# Bump when the build recipe changes, so cached directories of an older recipe are not reused.
BUILD_RECIPE = 1
_MIN_PIXELS = 56 * 56


@lru_cache(maxsize=4)
def _cached_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Training takes ~5 s; one process builds many tiny models of the same vocabulary in tests."""
    return train_tokenizer(vocab_size)


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (temporal, height, width) like Qwen's [16, 24, 24]."""
    half = head_dim // 2
    spatial = half * 3 // 8
    return [half - 2 * spatial, spatial, spatial]


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> "Qwen2VLConfig":  # noqa: F821
    """The Qwen2-VL config of a tiny model whose special-token ids come from `tokenizer`."""
    from transformers import Qwen2VLConfig

    if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(
            f"tiny model: hidden_size {cfg.hidden_size} must divide by num_attention_heads "
            f"{cfg.num_attention_heads}, which must divide by num_key_value_heads {cfg.num_key_value_heads}"
        )
    if cfg.vision_embed_dim % cfg.vision_num_heads:
        raise ValueError(f"tiny model: vision_embed_dim {cfg.vision_embed_dim} must divide by vision_num_heads")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                            "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _mrope_section(head_dim)},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=cfg.vision_depth, embed_dim=cfg.vision_embed_dim, hidden_size=cfg.hidden_size,
        num_heads=cfg.vision_num_heads, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
    )
    return Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def tiny_image_processor(cfg: TinyModelConfig) -> "Qwen2VLImageProcessorPil":  # noqa: F821
    """The PIL image processor (no torchvision needed) resizing to at most image_size² pixels."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        min_pixels=_MIN_PIXELS, max_pixels=cfg.image_size**2, patch_size=14, temporal_patch_size=2, merge_size=2
    )


def build_tiny_vlm(cfg: TinyModelConfig, out_dir: str | Path, seed: int) -> Path:
    """Build a tiny Qwen2-VL model and save it as a Hugging Face directory; deterministic by seed."""
    from transformers import Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _cached_tokenizer(cfg.vocab_size)
    config = tiny_config(cfg, tokenizer)
    # fork_rng: the seed decides the weights without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id, do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tiny_image_processor(cfg).save_pretrained(out)
    (out / "medgr2_tiny.json").write_text(
        json.dumps({"recipe": BUILD_RECIPE, "seed": seed, "tiny": cfg.model_dump()}, indent=1)
    )
    return out


def tiny_cache_key(cfg: TinyModelConfig, seed: int) -> str:
    """Stable short hash of everything that decides a tiny build."""
    blob = json.dumps({"recipe": BUILD_RECIPE, "seed": seed, "tiny": cfg.model_dump()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_model_dir(model: ModelConfig, cache_dir: str | Path, seed: int, role: str) -> Path:
    """The model directory for a role: `model.path` when set, else a cached tiny build.

    Roles share one build when their tiny configs and seeds are equal (the key does not include the
    role), which saves a build and disk. Builds go to a temporary directory renamed into place, so
    concurrent builders (several Ray actors starting at once) never see a half-written directory.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role '{role}'; expected one of {ROLES}")
    if model.path is not None:
        path = Path(model.path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{role} model path '{model.path}' is not a directory; set {role}.path to a local Hugging Face "
                "model directory, or leave it unset to build the offline tiny model"
            )
        return path
    root = Path(cache_dir).expanduser() / "tiny_models"
    target = root / f"qwen2vl-{tiny_cache_key(model.tiny, seed)}"
    if (target / "medgr2_tiny.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build_tiny_vlm(model.tiny, tmp, seed)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: its build is identical, keep it
            if not (target / "medgr2_tiny.json").is_file():
                raise
        log.info("built tiny %s model in %s", role, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
