"""The reward model: save -> load gives identical scores, padding-independent scores, gradients reach
the backbone, and a few steps of regression separate graded targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import LoraConfig
from medgr2_ray.models.loading import apply_lora
from medgr2_ray.models.processing import encode_prompts
from medgr2_ray.models.reward_head import RewardModel, last_token_index
from medgr2_ray.types import GenerationRequest


def _requests(ct: np.ndarray) -> list[GenerationRequest]:
    return [
        GenerationRequest("faithful", "Question: Which organ?\nAnswer: liver", (ct,)),
        GenerationRequest("perturbed", "Question: Which organ?\nAnswer: spleen", (ct,)),
        GenerationRequest("incoherent", "organ Which liver Answer: ?", (ct,)),
        GenerationRequest("irrelevant", "Question: Which bone of the hand?\nAnswer: scaphoid", (ct[::2, ::2].copy(),)),
    ]


def test_last_token_index_left_and_right() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [3, 2, 3]


def test_save_load_identical_scores_and_padding_independent(
    tiny_dir: Path, ct_image: np.ndarray, tmp_path: Path
) -> None:
    model = RewardModel.from_backbone(tiny_dir, seed=1).eval()
    requests = _requests(ct_image)
    left = encode_prompts(model.loaded, requests, padding_side="left")
    right = encode_prompts(model.loaded, requests, padding_side="right")
    with torch.no_grad():
        scores = model.score(left)
        assert scores.shape == (4,) and scores.dtype == torch.float32
        torch.testing.assert_close(scores, model.score(right), atol=1e-5, rtol=0)
        model.save_pretrained(tmp_path / "rm")
        again = RewardModel.from_pretrained(tmp_path / "rm").eval()
        assert torch.equal(again.score(left), scores)
    with pytest.raises(FileNotFoundError, match="from_backbone"):
        RewardModel.from_pretrained(tiny_dir)


def test_regression_fits_graded_targets_in_order(tiny_dir: Path, ct_image: np.ndarray) -> None:
    torch.manual_seed(0)
    model = RewardModel.from_backbone(tiny_dir, seed=0)
    inputs = encode_prompts(model.loaded, _requests(ct_image))
    targets = torch.tensor([10.0, 6.0, 0.0, -6.0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(model.score(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]  # a constant predictor cannot go below 36.75 = var(targets)
    with torch.no_grad():
        assert model.score(inputs).argsort(descending=True).tolist() == [0, 1, 2, 3]


def test_lora_backbone_gets_gradients_and_saves_merged(
    tiny_dir: Path, ct_image: np.ndarray, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = RewardModel.from_backbone(tiny_dir, seed=0)
    model.backbone = apply_lora(model.backbone, LoraConfig(r=4, alpha=8))
    inputs = encode_prompts(model.loaded, _requests(ct_image))
    model.score(inputs).sum().backward()
    grads = [p.grad for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)  # as after training
        scores = model.score(inputs)
        model.save_pretrained(tmp_path / "rm")
        reloaded = RewardModel.from_pretrained(tmp_path / "rm")
        torch.testing.assert_close(reloaded.score(inputs), scores, atol=1e-4, rtol=0)
    assert not any("adapter" in p.name for p in (tmp_path / "rm").iterdir())
    assert not any("lora" in n for n, _ in reloaded.backbone.named_parameters())
