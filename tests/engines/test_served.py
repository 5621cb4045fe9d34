"""How engines hold published weights (`engines/served.py`): views where they can, one exact copy where
they must (the bucketed host -> device path runs here on the CPU), published memory never written, and
LoRA served unmerged equal to the merged weight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import EngineConfig, LoraConfig, ModelConfig
from medgr2_ray.engines.hf import HFEngine
from medgr2_ray.engines.served import UnmergedLora, bucketed_copy, serve_tensors
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.sync.flat import pack_tensors, unpack_tensors
from medgr2_ray.types import GenerationRequest, SamplingParams

torch.set_num_threads(1)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=10)


@pytest.mark.parametrize("bucket_bytes", [64, 100, 1000, 1 << 20])
def test_bucketed_copy_is_exact_for_any_bucket_size(bucket_bytes: int) -> None:
    g = torch.Generator().manual_seed(0)
    sources = [torch.randn(37, 5, generator=g), torch.randn(3, generator=g).to(torch.bfloat16),
               torch.arange(1001, dtype=torch.int64), torch.randn(0), torch.randn(300, generator=g)]
    targets = [torch.empty(37, 5), torch.empty(3, dtype=torch.bfloat16), torch.empty(1001, dtype=torch.int64),
               torch.empty(0), torch.empty(300, dtype=torch.bfloat16)]  # the last one converts fp32 -> bf16
    bucketed_copy(list(zip(targets, sources)), bucket_bytes)
    for dst, src in zip(targets, sources):
        assert torch.equal(dst, src.to(dst.dtype))
    with pytest.raises(ValueError, match="bucket_bytes must be >= 64"):
        bucketed_copy(list(zip(targets, sources)), 32)


def test_a_view_that_must_become_a_copy_never_writes_published_memory() -> None:
    layer = torch.nn.Linear(8, 4)
    state = layer.state_dict(keep_vars=True)
    views: set[str] = set()
    first = pack_tensors({"weight": torch.ones(4, 8), "bias": torch.zeros(4)}, lora_only=False)
    kept = {k: b.copy() for k, b in first.buffers.items()}
    stats = serve_tensors(state, unpack_tensors(first), views)
    assert stats.copied_bytes == 0 and stats.viewed_bytes == first.num_bytes and views == {"weight", "bias"}
    assert layer.weight.data_ptr() == first.buffers["float32"].ctypes.data
    # The next version arrives in bf16: the fp32 parameter must copy, and must not copy into version 1.
    second = pack_tensors({"weight": torch.full((4, 8), 2.0, dtype=torch.bfloat16)}, lora_only=False)
    stats = serve_tensors(state, unpack_tensors(second), views)
    assert stats.copied_bytes == 4 * 8 * 2 and stats.viewed_bytes == 0 and views == {"bias"}
    assert torch.equal(layer.weight, torch.full((4, 8), 2.0)) and layer.weight.dtype == torch.float32
    assert all(np.array_equal(kept[k], first.buffers[k]) for k in kept)  # version 1's bytes untouched


def test_unmerged_lora_equals_the_merged_weight_and_comes_off_cleanly() -> None:
    g = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Linear(12, 16))
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    x = torch.randn(3, 5, 16, generator=g)
    lora = UnmergedLora()
    for _ in range(2):  # a second update replaces the first (never compounds)
        a, b = torch.randn(4, 16, generator=g), torch.randn(12, 4, generator=g)
        stats = lora.update(modules, {"0": (a, b)}, scale=2.0)
        assert stats.copied_bytes == 0 and lora.modules == {"0"}
        merged = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Linear(12, 16))
        merged.load_state_dict(w0)
        with torch.no_grad():
            merged[0].weight.add_(2.0 * b @ a)
            torch.testing.assert_close(model(x), merged(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lora.merged_weight("0", model[0].weight), merged[0].weight)
    assert all(torch.equal(v, w0[k]) for k, v in model.state_dict().items())  # W0 itself never changed
    half = lora.update(modules, {"1": (torch.randn(4, 12, generator=g).double(), torch.zeros(16, 4).double())}, 1.0)
    assert half.copied_bytes == (4 * 12 + 16 * 4) * 8 and lora.modules == {"1"}  # float64 -> the weight's fp32
    lora.clear()
    plain = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Linear(12, 16))
    plain.load_state_dict(w0)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


def test_weights_in_another_dtype_are_copied_once_and_serve_the_same(
    dirs: dict[int, Path], requests: list[GenerationRequest]
) -> None:
    learner = load_vlm(dirs[1]).model
    rounded = {n: p.detach().to(torch.bfloat16) for n, p in learner.named_parameters()}
    as_bf16 = pack_tensors(rounded, lora_only=False)
    as_fp32 = pack_tensors({n: t.float() for n, t in rounded.items()}, lora_only=False)
    viewing, copying = (HFEngine(dirs[0], ModelConfig(), EngineConfig()) for _ in range(2))
    viewing.load_weights(as_fp32, version=2)
    older = pack_tensors(dict(load_vlm(dirs[0]).model.named_parameters()), lora_only=False)
    copying.load_weights(older, version=1)  # views first: the bf16 version must not write into these
    kept = older.buffers["float32"].copy()
    copying.load_weights(as_bf16, version=2)
    assert viewing.last_load.copied_bytes == 0
    assert copying.last_load.copied_bytes == as_bf16.num_bytes and copying.last_load.viewed_bytes == 0
    assert np.array_equal(older.buffers["float32"], kept)
    for (name, a), b in zip(viewing.model.state_dict().items(), copying.model.state_dict().values()):
        assert torch.equal(a, b) and b.dtype == torch.float32, name
    assert [r.completion_token_ids for r in viewing.generate(requests, GREEDY)] == \
        [r.completion_token_ids for r in copying.generate(requests, GREEDY)]


@pytest.mark.gpu
def test_a_gpu_engine_takes_one_bucketed_copy(dirs: dict[int, Path], requests: list[GenerationRequest]) -> None:
    engine = HFEngine(dirs[0], ModelConfig(), EngineConfig())  # on the GPU when CUDA is present
    assert engine.device.type == "cuda"
    learner = load_vlm(dirs[1]).model
    flat = pack_tensors(dict(learner.named_parameters()), lora_only=False)
    engine.load_weights(flat, version=1)
    assert engine.last_load.copied_bytes == flat.num_bytes
    for name, tensor in unpack_tensors(flat).items():
        assert torch.equal(engine.model.state_dict()[name].cpu(), tensor), name
    lora = LoraConfig(enabled=True, r=4, alpha=8)
    lora_engine = HFEngine(dirs[0], ModelConfig(lora=lora), EngineConfig())
    a = torch.randn(4, lora_engine.model.config.text_config.hidden_size)
    name = "model.language_model.layers.0.self_attn.q_proj"
    b = torch.randn(lora_engine.model.get_submodule(name).weight.shape[0], 4)
    lora_engine.load_weights(pack_tensors({f"{name}.lora_A.weight": a, f"{name}.lora_B.weight": b}, True), 2)
    assert len(lora_engine.generate(requests, GREEDY)) == len(requests)
