"""RolloutActor serving published weights straight from the Ray object store (real Ray, real tiny models):
what it generates equals an engine with its own copy of the weights; a later publish never changes what
an engine serving an earlier version generates, even once nobody else holds that version and the store
reuses freed memory; a superseded version's memory is given back, the served one is kept."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ray import cloudpickle

from medgr2_ray.actors.rollout import RolloutActor, RolloutSpec
from medgr2_ray.config import EngineConfig, ModelConfig
from medgr2_ray.engines.hf import HFEngine
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.sync.flat import pack_tensors
from medgr2_ray.sync.weights import (
    fetch_weights,
    object_store_bytes_used,
    publish_weights,
)
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams, WeightVersion

# Workers cannot import test modules: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SAMPLED = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


class ProbedRollout(RolloutActor):
    """The real RolloutActor plus one question a test needs answered inside the actor's process."""

    def served_from(self, weights: WeightVersion) -> tuple[int, bool]:
        """(bytes the last load copied, whether every parameter lies inside `weights`' buffers: fetched
        again here, the object maps at the same addresses in this process)."""
        ranges = [(b.ctypes.data, b.ctypes.data + b.nbytes) for b in fetch_weights(weights).buffers.values()]
        inside = all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in self.engine.model.parameters())
        return self.engine.last_load.copied_bytes, inside


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    cache = tmp_path_factory.mktemp("rollout-weights")
    return {seed: ensure_model_dir(ModelConfig(), cache, seed=seed, role="policy") for seed in (0, 1)}


@pytest.fixture(scope="module")
def prompts() -> list[GenerationRequest]:
    image = np.random.default_rng(0).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    return [GenerationRequest("img", "Which modality is this?", (image,)),
            GenerationRequest("text", "Name one organ of the chest.")]


def _actor(model_dir: Path) -> ray.actor.ActorHandle:
    handle = ray.remote(ProbedRollout).options(num_cpus=0).remote(
        RolloutSpec("test", str(model_dir), ModelConfig(), EngineConfig(max_batch_size=4), 0))
    ray.get(handle.ready.remote())
    return handle


@pytest.fixture(scope="module")
def engines(ray_cluster: None, model_dirs: dict[int, Path]) -> Iterator[list[ray.actor.ActorHandle]]:
    handles = [_actor(model_dirs[0]) for _ in range(2)]
    yield handles
    for handle in handles:
        ray.kill(handle)


def _weights(model_dir: Path, shift: float = 0.0) -> dict[str, torch.Tensor]:
    """A learner's weights: a model's parameters, moved by `shift` to make a distinct version."""
    return {n: p.detach() + shift for n, p in load_vlm(model_dir).model.named_parameters()}


def _publish(named: dict[str, torch.Tensor], version: int) -> WeightVersion:
    return publish_weights(pack_tensors(named, lora_only=False), version)


def _outputs(rollouts: list[Rollout]) -> list[tuple[tuple[int, ...], bytes]]:
    return [(r.completion_token_ids, r.logprobs.tobytes()) for r in rollouts]


def _holds_one_version(baseline: int, version_bytes: int) -> Callable[[], bool]:
    """Whether the store holds exactly one version of `version_bytes` over `baseline` (+- half of one)."""
    return lambda: abs(object_store_bytes_used() - baseline - version_bytes) < version_bytes // 2


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Freeing is asynchronous (borrowers report to the owner, the raylet deletes): poll for it."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (object store holds {object_store_bytes_used()} bytes)")
        time.sleep(0.2)


def test_serving_published_buffers_generates_what_copied_weights_generate(
    engines: list[ray.actor.ActorHandle], model_dirs: dict[int, Path], prompts: list[GenerationRequest]
) -> None:
    actor = engines[0]
    published = _publish(_weights(model_dirs[1]), version=101)
    served = ray.get(actor.generate.remote(prompts, SAMPLED, published))
    assert all(r.weight_version == 101 for r in served)
    copied_bytes, inside = ray.get(actor.served_from.remote(published))
    assert copied_bytes == 0 and inside  # the update cost the put and nothing in the engine
    own_copy = HFEngine(model_dirs[1], ModelConfig(), EngineConfig(max_batch_size=4), seed=0)
    assert _outputs(served) == _outputs(own_copy.generate(prompts, SAMPLED))
    assert _outputs(ray.get(actor.generate.remote(prompts, GREEDY))) == _outputs(own_copy.generate(prompts, GREEDY))


def test_a_second_publish_never_changes_what_the_first_version_serves(
    engines: list[ray.actor.ActorHandle], model_dirs: dict[int, Path], prompts: list[GenerationRequest]
) -> None:
    first, second = engines
    v1 = _publish(_weights(model_dirs[1], 0.0), version=201)
    num_bytes = v1.num_bytes
    ray.get(first.load_weights.remote(v1))
    before = _outputs(ray.get(first.generate.remote(prompts, GREEDY)))
    del v1  # from here on only the serving actor holds version 1
    v2 = _publish(_weights(model_dirs[1], 0.05), version=202)
    ray.get(second.load_weights.remote(v2))
    # Churn the store with objects of the same size: freed memory would be reused (and overwritten) now.
    for fill in range(4):
        ref = ray.put(np.full(num_bytes // 4, float(fill), np.float32))
        del ref
    assert _outputs(ray.get(first.generate.remote(prompts, GREEDY))) == before
    assert _outputs(ray.get(second.generate.remote(prompts, GREEDY))) != before
    copied_bytes, inside = ray.get(second.served_from.remote(v2))
    assert copied_bytes == 0 and inside


def test_superseded_versions_are_freed_and_the_served_one_is_kept(
    ray_cluster: None, model_dirs: dict[int, Path], prompts: list[GenerationRequest]
) -> None:
    actor = _actor(model_dirs[0])
    baseline = object_store_bytes_used()
    version_bytes = 0
    for version in range(1, 6):
        published = _publish(_weights(model_dirs[1], 0.01 * version), version=300 + version)
        version_bytes = published.num_bytes
        ray.get(actor.load_weights.remote(published))
        del published  # the driver lets go, as the controller does with an old WeightVersion
        # Exactly one version stays: the one the actor serves; every earlier one is given back.
        _wait_for(_holds_one_version(baseline, version_bytes),
                  f"after version {version} the store should hold one version ({version_bytes} bytes) over "
                  f"its baseline {baseline}")
    greedy = _outputs(ray.get(actor.generate.remote(prompts, GREEDY)))  # still served, still readable
    # A LoRA update on top serves adapters over the same base views: the full version stays held.
    name = "model.language_model.layers.0.self_attn.q_proj"
    lora = {f"{name}.lora_A.weight": torch.full((8, 64), 0.05), f"{name}.lora_B.weight": torch.full((64, 8), 0.05)}
    ray.get(actor.load_weights.remote(publish_weights(pack_tensors(lora, lora_only=True), 400)))
    ray.get(actor.generate.remote(prompts, GREEDY))  # run the engine: a freed base would read reused memory
    _wait_for(_holds_one_version(baseline, version_bytes),
              "a LoRA update must not release the full version its base is served from")
    assert _outputs(ray.get(actor.generate.remote(prompts, GREEDY))) != greedy  # the adapter is in effect
    ray.kill(actor)
    _wait_for(lambda: object_store_bytes_used() - baseline < version_bytes // 2,
              f"with no engine serving it the last version should be freed (baseline {baseline})")
