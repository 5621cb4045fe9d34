"""Weight export makes one copy: `export_weights` packs straight from the parameters into the publish
buffer (measured: the only memory it allocates is that buffer), and an engine serving an exported
version never sees later training steps."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from medgr2_ray.config import EngineConfig, GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.engines.hf import HFEngine
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.models.processing import encode_prompts, forward_kwargs
from medgr2_ray.sync.flat import pack_tensors
from medgr2_ray.types import FlatWeights, GenerationRequest, SFTExample


def _allocated(fn: Callable[[], FlatWeights]) -> tuple[int, int, int]:
    """(bytes torch allocated, peak bytes numpy/Python allocated, payload bytes) while `fn` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    torch_bytes = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
    tracemalloc.start()
    try:
        flat = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return torch_bytes, peak, flat.num_bytes


def test_export_allocates_only_the_publish_buffer(tiny_dir: Path) -> None:
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(), GRPOConfig(), seed=0)
    torch_bytes, numpy_peak, payload = _allocated(learner.export_weights)
    assert payload > 1 << 20  # every weight: a couple of MB
    assert torch_bytes < payload // 100  # no clone: torch copied nothing
    assert payload <= numpy_peak < payload + (256 << 10)  # the buffer, once
    # The two-step path the learner used before (clone, then pack) holds the weights twice.
    torch_before, numpy_before, _ = _allocated(lambda: pack_tensors(learner.export_state(), lora_only=False))
    assert torch_before >= payload and numpy_before >= payload


def test_training_after_an_export_never_changes_what_the_engine_serves(
    tiny_dir: Path, mixed_requests: list[GenerationRequest]
) -> None:
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(lr=1e-2), GRPOConfig(), seed=0)
    serving, later = (HFEngine(tiny_dir, ModelConfig(), EngineConfig(), seed=0) for _ in range(2))
    first = learner.export_weights()
    serving.load_weights(first, learner.version)  # in one process the engine views `first` itself
    inputs = encode_prompts(serving.loaded, mixed_requests)
    with torch.no_grad():
        before = serving.model(**forward_kwargs(inputs)).logits
    learner.sft_step([SFTExample(r, "CT") for r in mixed_requests])  # in-place optimizer update
    later.load_weights(learner.export_weights(), learner.version)
    with torch.no_grad():
        assert torch.equal(serving.model(**forward_kwargs(inputs)).logits, before)
        assert not torch.allclose(later.model(**forward_kwargs(inputs)).logits, before)
