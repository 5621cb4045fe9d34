"""`learner/zero3.py`: under ZeRO-3 a rank with a text-only micro-batch runs the vision tower on a dummy
image so every rank gathers the same parameters in the same order. The dummy must change nothing: the
same logits and the same language-model gradients as without it, and a zero (but present) gradient on
every vision parameter, so ZeRO-3's reduce-scatter sees the same parameters on every rank."""

from __future__ import annotations

from pathlib import Path

import torch

from medgr2_ray.learner.zero3 import install_vision_keepalive
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.models.processing import encode_prompts, forward_kwargs
from medgr2_ray.types import GenerationRequest


def _forward_backward(model: torch.nn.Module, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    model.zero_grad(set_to_none=True)
    logits = model(**forward_kwargs(inputs)).logits
    logits.float().square().mean().backward()
    return logits.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_the_dummy_tower_changes_no_number_and_gives_every_vision_weight_a_gradient(tiny_dir: Path) -> None:
    loaded = load_vlm(tiny_dir)
    model = loaded.model.train()
    inputs = encode_prompts(loaded, [GenerationRequest("t", "Name one organ of the chest."),
                                     GenerationRequest("u", "And one of the abdomen?")])
    plain_logits, plain_grads = _forward_backward(model, inputs)
    vision = [n for n in plain_grads if ".visual." in n]
    assert vision and all(plain_grads[n] is None for n in vision)  # the text path skips the tower

    keepalive = install_vision_keepalive(model)
    assert keepalive is not None
    logits, grads = _forward_backward(model, inputs)
    assert keepalive.dummy_runs == 1
    assert torch.equal(logits, plain_logits)
    for name, grad in grads.items():
        assert grad is not None, f"{name} got no gradient: ZeRO-3 ranks would reduce different parameter sets"
        if name in vision:
            assert not grad.any()
        else:
            assert torch.equal(grad, plain_grads[name]), name

    image = GenerationRequest("i", "Which organ?", (torch.zeros(56, 56, 3, dtype=torch.uint8).numpy(),))
    model(**forward_kwargs(encode_prompts(loaded, [image])))
    assert keepalive.dummy_runs == 1  # a batch with an image runs the real tower, no dummy
    keepalive.remove()
