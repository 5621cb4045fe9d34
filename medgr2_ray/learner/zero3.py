"""ZeRO-3 on a VLM: every rank must run the vision tower in every forward, or the ranks deadlock.

Under DeepSpeed ZeRO-3 each rank holds a shard of every parameter; a module's forward first all-gathers
its parameters (a collective every rank must join, in the same order), and its backward reduce-scatters
their gradients. A Qwen2-VL forward runs the vision tower only when the batch has images, so a rank whose
micro-batch is text-only (a text prompt, or the zero-weight padding micro-batch that `synced_micro_batch_count`
adds to a short rank) skips the tower's all-gathers while another rank joins them: gloo then fails with
"Received data size doesn't match" or hangs (seen on two gloo ranks before this module existed).

The fix, as LLaVA-style trainers do it: when a forward has no image, run the tower on one dummy image
of the smallest valid grid (one merged patch of zeros) at the very place the real tower runs (right
after the token embedding), and scatter its output into the embeddings under an empty mask. Then every rank runs the same
modules in the same order (so ZeRO-3's all-gathers and its prefetch trace match), every parameter gets
a gradient on every rank (so the reduce-scatter buckets hold the same parameters), and the numbers do
not change: the dummy contributes exactly zero to outputs and gradients.

Pure torch and transformers module hooks; no DeepSpeed import (DeepSpeedStrategy installs it).
"""

from __future__ import annotations

from typing import Any

import torch

from medgr2_ray.models.processing import vlm_core


def _pooled(out: Any) -> torch.Tensor:
    """The merged image features of a `get_image_features` output, as one [N, hidden] tensor (what the
    model scatters into the embeddings)."""
    pooled = getattr(out, "pooler_output", out)
    return torch.cat(list(pooled)) if isinstance(pooled, (tuple, list)) else pooled


class VisionKeepAlive:
    """Forward hooks on a Qwen2-VL-style model that run the vision tower on a dummy image whenever a
    forward has none (see the module docstring). `remove()` takes the hooks off again."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.core = vlm_core(model)
        visual = self.core.visual
        cfg = self.core.config.vision_config
        merge = int(cfg.spatial_merge_size)
        patch = cfg.patch_size if isinstance(cfg.patch_size, int) else int(cfg.patch_size[0])
        temporal = cfg.temporal_patch_size if isinstance(cfg.temporal_patch_size, int) else int(cfg.temporal_patch_size[0])
        self._patch_dim = int(cfg.in_channels) * temporal * patch * patch
        self._grid = (1, merge, merge)  # one merged patch: the smallest grid the tower accepts
        self._visual = visual
        self._needed = False
        self.dummy_runs = 0  # how many forwards ran the tower on the dummy image (tests read it)
        self._handles = [
            self.core.register_forward_pre_hook(self._before_core, with_kwargs=True),
            self.core.get_input_embeddings().register_forward_hook(self._after_embedding),
        ]

    def _before_core(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Note whether this forward carries images (then the real tower runs and no dummy is needed)."""
        self._needed = kwargs.get("pixel_values") is None and kwargs.get("pixel_values_videos") is None

    def _after_embedding(self, _module: torch.nn.Module, _args: tuple[Any, ...], embeds: torch.Tensor) -> Any:
        """Right after the token embedding, where the real tower would run: the dummy tower, added as 0."""
        if not self._needed:
            return None
        self._needed = False  # once per forward (the embedding may be called again, e.g. by generation)
        dtype = next(self._visual.parameters()).dtype
        pixels = torch.zeros(self._grid[1] * self._grid[2], self._patch_dim, dtype=dtype, device=embeds.device)
        grid = torch.tensor([self._grid], dtype=torch.long, device=embeds.device)
        features = _pooled(self.core.get_image_features(pixels, grid)).to(embeds.device, embeds.dtype)
        self.dummy_runs += 1
        # The real path merges image features with `masked_scatter`; doing the same with an empty mask keeps
        # the autograd graph, and so the order of ZeRO-3's backward gathers, identical (a `+ 0 * x` node
        # would let the embedding's backward run before the tower's on this rank only).
        return embeds.masked_scatter(torch.zeros_like(embeds, dtype=torch.bool), features)

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def install_vision_keepalive(model: torch.nn.Module) -> VisionKeepAlive | None:
    """`VisionKeepAlive` on `model` (a VLM, PEFT-wrapped or not, or a reward model whose `backbone` is
    one); None for a model without a vision tower (nothing to keep alive)."""
    target = getattr(model, "backbone", model)
    try:
        core = vlm_core(target)
    except TypeError:
        return None
    if not hasattr(core, "visual") or not hasattr(core, "get_image_features"):
        return None
    return VisionKeepAlive(target)
