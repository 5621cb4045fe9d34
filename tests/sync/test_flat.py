"""Flat weight packing: exact round trips for every dtype, zero-copy views, LoRA filtering, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgr2_ray.sync.flat import pack_tensors, unpack_tensors
from medgr2_ray.types import FlatWeights, TensorSpec


def _named() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w.f32": torch.randn(3, 4, generator=g),
        "w.bf16": torch.randn(5, 2, generator=g).to(torch.bfloat16),
        "w.f16": torch.randn(7, generator=g).to(torch.float16),
        "ids.i64": torch.arange(-5, 6),
        "ids.i32": torch.arange(9, dtype=torch.int32).reshape(3, 3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "b.f32": torch.randn(2, 2, generator=g).t(),  # non-contiguous input
        "bf16.extremes": torch.tensor([float("inf"), -0.0, 1e-38, 3.0e38], dtype=torch.bfloat16),
    }


def test_round_trip_is_bit_exact_for_every_dtype() -> None:
    named = _named()
    flat = pack_tensors(named, lora_only=False)
    assert set(flat.buffers) == {"float32", "bfloat16", "float16", "int64", "int32"}
    assert flat.buffers["bfloat16"].dtype == np.uint16  # bf16 bits travel as uint16
    assert all(b.ndim == 1 and b.flags.c_contiguous for b in flat.buffers.values())
    out = unpack_tensors(flat)
    assert list(out) == list(named)
    for name, tensor in named.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape, name
        assert torch.equal(out[name].view(-1).view(torch.uint8), tensor.contiguous().view(-1).view(torch.uint8))
    assert flat.num_bytes == sum(t.numel() * t.element_size() for t in named.values())


def test_unpack_is_zero_copy_and_works_on_read_only_buffers() -> None:
    flat = pack_tensors(_named(), lora_only=False)
    for buffer in flat.buffers.values():
        buffer.flags.writeable = False  # as when fetched from the Ray object store
    out = unpack_tensors(flat)
    base = flat.buffers["float32"].ctypes.data
    assert out["w.f32"].data_ptr() == base
    spec = next(s for s in flat.index if s.name == "b.f32")
    assert out["b.f32"].data_ptr() == base + 4 * spec.offset


def test_lora_only_packs_only_adapter_tensors() -> None:
    named = {
        "base_model.model.layers.0.q_proj.base_layer.weight": torch.ones(4, 4),
        "base_model.model.layers.0.q_proj.lora_A.default.weight": torch.ones(2, 4),
        "base_model.model.layers.0.q_proj.lora_B.default.weight": torch.zeros(4, 2),
    }
    flat = pack_tensors(named, lora_only=True)
    assert flat.lora_only
    assert [s.name for s in flat.index] == list(named)[1:]
    with pytest.raises(ValueError, match="no LoRA tensors"):
        pack_tensors({"w": torch.ones(1)}, lora_only=True)


def test_bad_input_is_refused_with_the_name() -> None:
    with pytest.raises(TypeError, match="'w' is a ndarray"):
        pack_tensors({"w": np.ones(3)}, lora_only=False)  # type: ignore[dict-item]
    broken = FlatWeights({"float32": np.zeros(3, np.float32)}, (TensorSpec("x", "float32", (2, 2), 0),), False)
    with pytest.raises(ValueError, match="'x' overruns"):
        unpack_tensors(broken)
