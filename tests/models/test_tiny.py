"""Tiny model builds: save -> reload is exact, builds are deterministic by seed, the cache is reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2VLForConditionalGeneration

from medgr2_ray.config import ModelConfig, TinyModelConfig
from medgr2_ray.models.loading import LoadedVLM, load_vlm
from medgr2_ray.models.processing import encode_prompts, forward_kwargs
from medgr2_ray.models.tiny import _cached_tokenizer, build_tiny_vlm, ensure_model_dir, tiny_config
from medgr2_ray.types import GenerationRequest


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_build_save_reload_gives_identical_logits(loaded: LoadedVLM, ct_image: np.ndarray) -> None:
    cfg = TinyModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the session's tiny model was built with seed 0
        in_memory = Qwen2VLForConditionalGeneration(tiny_config(cfg, _cached_tokenizer(cfg.vocab_size))).eval()
    inputs = encode_prompts(loaded, [GenerationRequest("ct", "Which organ is shown?", (ct_image,))])
    with torch.no_grad():
        before = in_memory(**forward_kwargs(inputs)).logits
        after = loaded.model(**forward_kwargs(inputs)).logits
    assert torch.equal(before, after)
    assert before.std() > 0  # a real, non-degenerate model


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path, tiny_dir: Path) -> None:
    cfg = TinyModelConfig()
    again = _weights(build_tiny_vlm(cfg, tmp_path / "again", seed=0))
    first = _weights(tiny_dir)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = _weights(build_tiny_vlm(cfg, tmp_path / "other", seed=1))
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_directory_is_an_ordinary_hf_model_dir(tiny_dir: Path, loaded: LoadedVLM) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "generation_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # no pickles
    assert loaded.model.config.model_type == "qwen2_vl"
    text = loaded.model.config.text_config
    assert text.hidden_size // text.num_attention_heads >= 32  # vLLM's CPU attention kernel needs it
    assert loaded.model.config.image_token_id == loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_ensure_model_dir_caches_and_respects_path(tmp_path: Path) -> None:
    small = ModelConfig(tiny=TinyModelConfig(hidden_size=32, num_attention_heads=1, intermediate_size=32))
    built = ensure_model_dir(small, tmp_path, seed=3, role="generator")
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert ensure_model_dir(small, tmp_path, seed=3, role="reward") == built  # equal configs share
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert ensure_model_dir(small, tmp_path, seed=4, role="generator") != built
    assert ensure_model_dir(small.model_copy(update={"path": str(built)}), tmp_path, 0, "policy") == built
    assert not list((tmp_path / "tiny_models").glob(".building-*"))  # no half-built leftovers


def test_bad_paths_and_roles_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="policy.path"):
        ensure_model_dir(ModelConfig(path=str(tmp_path / "missing")), tmp_path, 0, "policy")
    with pytest.raises(ValueError, match="unknown model role 'critic'"):
        ensure_model_dir(ModelConfig(), tmp_path, 0, "critic")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_vlm(tmp_path)
    with pytest.raises(ValueError, match="must divide"):
        build_tiny_vlm(TinyModelConfig(hidden_size=60, num_attention_heads=8), tmp_path / "bad", 0)
