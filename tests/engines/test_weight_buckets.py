"""Bucketed weight updates (engines/weight_buckets.py), the part of vLLM weight sync that needs no vLLM:
bucket planning (bounded, whole layer groups, every tensor once), the bucket file round trip from
published buffers (bit-exact, deleted afterwards), checkpoint names, and LoRA merging of only the
adapted layers against PEFT's own merge. The vLLM lane loads these buckets into a real engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from engine_helpers import lora_learner

from medgr2_ray.config import LoraConfig
from medgr2_ray.engines.weight_buckets import (
    CheckpointReader,
    LoraMerger,
    bucket_file,
    layer_group,
    memory_name,
    plan_buckets,
    read_bucket,
    tensor_bytes,
)
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.sync.flat import pack_tensors, unpack_tensors

LORA = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def test_checkpoint_names_and_shapes_are_the_models_in_memory_ones(dirs: dict[int, Path]) -> None:
    model = load_vlm(dirs[0]).model
    reader = CheckpointReader(dirs[0])
    state = model.state_dict()
    assert set(reader.shapes) <= set(state) and "model.language_model.embed_tokens.weight" in reader.shapes
    for name, shape in reader.shapes.items():
        assert tuple(state[name].shape) == shape
        torch.testing.assert_close(reader.get(name), state[name], rtol=0, atol=0)
    assert memory_name("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert memory_name("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert memory_name("model.language_model.norm.weight") == "model.language_model.norm.weight"


@pytest.mark.parametrize("bucket_bytes", [1 << 10, 40 << 10, 1 << 30])
def test_buckets_are_bounded_hold_whole_layer_groups_and_every_tensor_once(
    dirs: dict[int, Path], bucket_bytes: int
) -> None:
    named = dict(load_vlm(dirs[0]).model.named_parameters())
    buckets = plan_buckets({n: tensor_bytes(t) for n, t in named.items()}, bucket_bytes)
    flat = [n for b in buckets for n in b]
    assert sorted(flat) == sorted(named) and len(flat) == len(set(flat))
    owner = {n: i for i, b in enumerate(buckets) for n in b}
    for name in named:  # a layer group never straddles two buckets (q/k/v fuse into one vLLM layer)
        assert {owner[m] for m in named if layer_group(m) == layer_group(name)} == {owner[name]}
    for bucket in buckets:
        size = sum(tensor_bytes(named[n]) for n in bucket)
        groups = {layer_group(n) for n in bucket}
        assert size <= bucket_bytes or len(groups) == 1  # only a lone oversize group may exceed it
    if bucket_bytes == 1 << 30:
        assert len(buckets) == 1
    else:
        assert len(buckets) > 2


def test_bucket_file_round_trip_is_bit_exact_from_published_buffers_and_is_deleted(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {"a.x.weight": torch.randn(3, 5, generator=gen), "a.y.bias": torch.randn(7, generator=gen).to(torch.bfloat16),
               "b.z.weight": torch.randn(2, 2, 2, generator=gen), "c.w.empty": torch.zeros(0)}
    views = unpack_tensors(pack_tensors(tensors, lora_only=False))  # what an engine gets from the object store
    with bucket_file(views, list(views), directory=str(tmp_path)) as (path, entries):
        assert os.path.getsize(path) >= sum(tensor_bytes(t) for t in tensors.values())
        assert all(e.offset % 64 == 0 for e in entries)
        back = dict(read_bucket(path, entries))
        for name, tensor in tensors.items():
            assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)
    assert not Path(path).exists() and list(tmp_path.iterdir()) == []


def _engine_state(reader: CheckpointReader, served: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: served.get(n, reader.get(n)) for n in reader.shapes}


def test_lora_merge_sends_only_adapted_groups_equals_peft_and_never_compounds(dirs: dict[int, Path]) -> None:
    reader = CheckpointReader(dirs[0])
    merger = LoraMerger(reader, LORA)
    served: dict[str, torch.Tensor] = {}
    for seed in (1, 2):  # the second update applies to W0, not to W0 + the first delta
        learner = lora_learner(dirs[0], seed, LORA)
        adapters = unpack_tensors(pack_tensors(dict(learner.named_parameters()), lora_only=True))
        lazy = merger.merge(adapters)
        assert lazy.sizes == {n: tensor_bytes(t) for n, t in lazy.items()}  # sizes known before merging
        update = dict(lazy)
        assert update and all(".self_attn." in n for n in update)  # q/v adapted: their attention blocks only
        assert sum(tensor_bytes(t) for t in update.values()) < sum(
            tensor_bytes(reader.get(n)) for n in reader.shapes) / 4  # a fraction of the model
        served.update(update)
        expected = learner.merge_and_unload().state_dict()
        for name, value in _engine_state(reader, served).items():
            torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5)
    assert set(merger.base) == {n for n in update}  # W0 kept for the adapted groups only

    # An update whose adapters cover one module less reverts that module's group to W0.
    learner = lora_learner(dirs[0], 3, LORA)
    params = dict(learner.named_parameters())
    dropped = next(n for n in params if ".lora_A." in n).replace(".lora_A.", ".lora_{}.")
    kept = {n: p for n, p in params.items() if ".lora_" in n and n not in (dropped.format("A"), dropped.format("B"))}
    served.update(dict(merger.merge(kept)))
    weight = dropped.format("A").removeprefix("base_model.model.").replace(".lora_A.default", "")
    torch.testing.assert_close(served[weight], reader.get(weight), rtol=0, atol=0)


def test_bad_lora_updates_are_refused_before_anything_changes(dirs: dict[int, Path]) -> None:
    merger = LoraMerger(CheckpointReader(dirs[0]), LORA)
    wrong_rank = {"model.language_model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 64),
                  "model.language_model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(64, 2)}
    with pytest.raises(ValueError, match="lora.r=4"):
        merger.merge(wrong_rank)
    with pytest.raises(KeyError, match="needs lora_A and lora_B"):
        merger.merge({"model.language_model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 64)})
    assert merger.base == {}
