"""Weight sync over the object store: one publish, zero-copy reads on the node, exact values, a readable
error when the publisher is gone."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import ray
import torch
from ray import cloudpickle

from medgr2_ray.sync.flat import pack_tensors, unpack_tensors
from medgr2_ray.sync.weights import WeightSyncError, fetch_weights, newest, publish_weights
from medgr2_ray.types import WeightVersion


# Workers cannot import test modules: ship this module's functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _named() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "layer.0.weight": torch.randn(256, 256, generator=g),  # > 100 KB: lives in the shared-memory store, not inlined
        "layer.0.bias": torch.randn(64, generator=g),
        "embed.weight": torch.randn(100, 16, generator=g).to(torch.bfloat16),
    }


def remote_helpers() -> tuple[Any, Any]:
    """A publishing actor (a stand-in learner that owns the object) and a reading task."""

    @ray.remote(num_cpus=0)
    class Publisher:
        def publish(self, version: int) -> WeightVersion:
            return publish_weights(pack_tensors(_named(), lora_only=False), version)

    @ray.remote(num_cpus=0)
    def read_in_worker(weights: WeightVersion) -> tuple[bool, float]:
        """What a rollout actor does between batches: fetch, and look at one tensor."""
        flat = fetch_weights(weights)
        writable = any(buf.flags.writeable for buf in flat.buffers.values())
        return writable, float(unpack_tensors(flat)["layer.0.bias"].sum())

    return Publisher, read_in_worker


def test_publish_once_read_anywhere_zero_copy(ray_cluster: None) -> None:
    Publisher, read_in_worker = remote_helpers()
    publisher = Publisher.remote()
    weights = ray.get(publisher.publish.remote(3))
    assert weights.version == 3 and not weights.lora_only
    assert weights.num_bytes == 256 * 256 * 4 + 64 * 4 + 100 * 16 * 2  # two dtype buffers, nothing else
    flat = fetch_weights(weights)
    assert set(flat.buffers) == {"float32", "bfloat16"}
    got = unpack_tensors(flat)
    for name, want in _named().items():
        assert torch.equal(got[name], want), name
    # Read-only buffers mean Ray mapped them from the shared-memory object store instead of copying.
    assert not any(buf.flags.writeable for buf in flat.buffers.values())
    writable, total = ray.get(read_in_worker.remote(weights))
    assert not writable and total == pytest.approx(float(_named()["layer.0.bias"].sum()))
    ray.kill(publisher)


def test_a_version_that_is_not_flat_weights_is_refused(ray_cluster: None) -> None:
    bogus = WeightVersion(7, ray.put({"w": np.zeros(3)}), 24, False, 0.0)
    with pytest.raises(WeightSyncError, match="weight version 7 holds a dict, not FlatWeights"):
        fetch_weights(bogus)


def test_newest_and_version_bounds() -> None:
    a, b = WeightVersion(1, None, 0, False, 0.0), WeightVersion(2, None, 0, False, 0.0)
    assert newest(a, b) is b and newest(b, a) is b and newest(None, a) is a and newest(a, None) is a
    with pytest.raises(ValueError, match="start at 0"):
        publish_weights(pack_tensors({"w": torch.zeros(1)}, lora_only=False), -1)
