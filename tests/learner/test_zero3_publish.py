"""DeepSpeed ZeRO-3 on two real gloo ranks hosted by Ray Train: training matches plain torch, and the
weight publish completes (every rank joins the export gather, rank 0 alone publishes).

Before the fix only rank 0 exported; under ZeRO-3 the export enters DeepSpeed's `GatheredParameters`,
an all-gather every rank must join, so the first publish hung. Here both `TorchTrainer` workers build a
`PolicyLearner` with ZeRO-3 (each holds half of every parameter), train three SFT steps on their halves
of the batch (rank 0's half is text-only, rank 1's has the images: `learner/zero3.py` keeps the
vision tower's ZeRO-3 gathers in step), and call `export_weights()` together; rank 0 publishes through the Ray object store
(`sync.weights.publish_weights`), reads the version back (`fetch_weights`) and saves what it read.
The reference is one plain-torch learner in this process on the whole batch: the published weights
must equal its weights within 1e-5 (full training, and LoRA adapters plus their merged full state),
and so must the model directory all ranks write together (`save_pretrained`, LoRA merged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import deepspeed  # noqa: F401  (scripts/setup.sh installs it: this test must run, never skip)
import numpy as np
import pytest
import torch
from ray import cloudpickle

from medgr2_ray.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.sync.flat import unpack_tensors
from medgr2_ray.types import GenerationRequest, SFTExample

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray Train workers cannot import tests/

STEPS = 3
LORA = LoraConfig(enabled=True, r=4, alpha=8)


def _examples() -> list[SFTExample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        images = (rng.integers(0, 255, (56 + 14 * (i % 3), 56, 3), dtype=np.uint8),) if i % 2 else ()
        request = GenerationRequest(f"r{i}", f"Question {i}: what is shown?", images=images)
        out.append(SFTExample(request, f"Finding number {i % 3}."))
    return out


def _learner_cfg(strategy: str) -> LearnerConfig:
    return LearnerConfig(strategy=strategy, zero_stage=3, lr=3e-3, micro_batch_size=2, warmup_steps=1,
                         schedule="linear", schedule_steps=6)


def _published(learner: PolicyLearner, merged: bool) -> dict[str, np.ndarray] | None:
    """Every rank exports; rank 0 publishes, fetches the version back and returns what it read."""
    from medgr2_ray.sync.weights import fetch_weights, publish_weights

    flat = learner.export_weights(merged=merged)
    if learner.rank != 0:
        assert flat is None, "only rank 0 may get the weights"
        return None
    assert flat is not None
    version = publish_weights(flat, learner.version)
    return {k: v.float().numpy().copy() for k, v in unpack_tensors(fetch_weights(version)).items()}


def _train_loop(config: dict[str, Any]) -> None:  # runs inside each Ray Train worker
    import ray.train
    from safetensors.numpy import save_file

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    shard = _examples()[rank::world]
    out = Path(config["out"])
    for name, model_cfg in (("full", ModelConfig()), ("lora", ModelConfig(lora=LORA))):
        learner = PolicyLearner(config["model_dir"], model_cfg, _learner_cfg("deepspeed"), GRPOConfig(), seed=0,
                                rank=rank, world_size=world, local_rank=ctx.get_local_rank())
        losses = [learner.sft_step(shard)["loss"] for _ in range(STEPS)]
        exports = {"": _published(learner, merged=False)}
        if model_cfg.lora.enabled:
            exports["_merged"] = _published(learner, merged=True)
        learner.save_pretrained(out / f"{name}_hf")  # all ranks: the next stage's model directory
        if rank == 0:
            for suffix, tensors in exports.items():
                assert tensors is not None
                save_file(tensors, str(out / f"{name}{suffix}.safetensors"))
            keepalive = learner.strategy.vision_keepalive  # rank 0's shard is text-only (learner/zero3.py)
            (out / f"{name}.json").write_text(json.dumps({"losses": losses, "version": learner.version,
                                                          "dummy_vision_runs": keepalive.dummy_runs}))
    ray.train.report({"done": 1})


def _reference(model_dir: Path, model_cfg: ModelConfig) -> tuple[PolicyLearner, list[float]]:
    learner = PolicyLearner(model_dir, model_cfg, _learner_cfg("torch"), GRPOConfig(), seed=0)
    return learner, [learner.sft_step(_examples())["loss"] for _ in range(STEPS)]


def _saved(directory: Path) -> dict[str, np.ndarray]:
    """The weights of a model directory written by `save_pretrained`, under in-memory names."""
    from medgr2_ray.models.loading import load_vlm

    return {k: v.float().numpy() for k, v in load_vlm(directory).model.state_dict().items()}


def _assert_close(published: dict[str, np.ndarray], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(published) == sorted(expected)
    worst = max(float(np.abs(published[k] - expected[k].detach().float().numpy()).max()) for k in expected)
    assert worst <= 1e-5, f"published weights differ from plain torch by {worst:.2e}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_zero3_publish_on_two_ray_train_ranks_equals_plain_torch(ray_cluster: None, tiny_dir: Path,
                                                                tmp_path: Path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.numpy import load_file

    trainer = TorchTrainer(
        _train_loop, train_loop_config={"model_dir": str(tiny_dir), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="zero3_publish", storage_path=str(tmp_path / "ray_train")),
    )
    result = trainer.fit()
    assert result.error is None, result.error

    full, full_losses = _reference(tiny_dir, ModelConfig())
    zero3 = json.loads((tmp_path / "full.json").read_text())
    assert full_losses[-1] < full_losses[0]  # the steps do something
    np.testing.assert_allclose(zero3["losses"], full_losses, rtol=0, atol=1e-5)
    assert zero3["version"] == STEPS
    assert zero3["dummy_vision_runs"] > 0  # rank 0 had no image: the tower ran on a dummy, as on rank 1
    _assert_close(load_file(tmp_path / "full.safetensors"), dict(full.model.state_dict()))
    _assert_close(_saved(tmp_path / "full_hf"), dict(full.model.state_dict()))

    lora, lora_losses = _reference(tiny_dir, ModelConfig(lora=LORA))
    np.testing.assert_allclose(json.loads((tmp_path / "lora.json").read_text())["losses"], lora_losses,
                               rtol=0, atol=1e-5)
    adapters = {n: p for n, p in lora.model.named_parameters() if ".lora_" in n}
    _assert_close(load_file(tmp_path / "lora.safetensors"), adapters)
    merged = lora.export_state(merged=True)
    assert merged is not None
    _assert_close(load_file(tmp_path / "lora_merged.safetensors"), merged)
    _assert_close(_saved(tmp_path / "lora_hf"), merged)
