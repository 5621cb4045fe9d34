"""Plain torch vs DeepSpeed ZeRO-2 on real gloo process groups (CPU), and exact ZeRO-2 resume.

Two ranks are spawned with torch.multiprocessing; each holds half of the batch. The same three SFT
steps run under the torch strategy and under DeepSpeed ZeRO-2 (optimizer state partitioned over the
two ranks), and once more in this process with one rank and the whole batch. Because each rank
divides by the *global* token count and gradients are summed over ranks, all three must report the
same losses and end with the same weights. Then a ZeRO-2 run is checkpointed after step 1 (each rank
saves its own partition), reloaded into fresh learners, and must repeat steps 2-3 exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medgr2_ray.config import GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.types import GenerationRequest, SFTExample

import deepspeed  # noqa: E402,F401  (scripts/setup.sh installs it: this test must run, never skip)

STEPS = 3


def _examples() -> list[SFTExample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        images = (rng.integers(0, 255, (56 + 14 * (i % 3), 56, 3), dtype=np.uint8),) if i % 2 else ()
        request = GenerationRequest(f"r{i}", f"Question {i}: what is shown?", images=images)
        out.append(SFTExample(request, f"Finding number {i % 3}."))
    return out


def _config(strategy: str) -> LearnerConfig:
    return LearnerConfig(strategy=strategy, zero_stage=2, lr=3e-3, micro_batch_size=2, warmup_steps=1, schedule="linear", schedule_steps=6)


def _train(learner: PolicyLearner, shard: list[SFTExample], steps: int) -> list[float]:
    return [learner.sft_step(shard)["loss"] for _ in range(steps)]


def _flat(learner: PolicyLearner) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in learner.model.parameters()])


def _worker(rank: int, world: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    shard = _examples()[rank::world]
    results: dict[str, list[float]] = {}
    for strategy in ("torch", "deepspeed"):
        learner = PolicyLearner(model_dir, ModelConfig(), _config(strategy), GRPOConfig(), seed=0, rank=rank, world_size=world)
        results[strategy] = _train(learner, shard, STEPS)
        np.save(f"{out_dir}/{strategy}_rank{rank}.npy", _flat(learner).numpy())

    ckpt = Path(out_dir) / "zero2-ckpt"
    first = PolicyLearner(model_dir, ModelConfig(), _config("deepspeed"), GRPOConfig(), seed=0, rank=rank, world_size=world)
    _train(first, shard, 1)
    first.save_checkpoint(ckpt)
    results["straight"] = _train(first, shard, STEPS - 1)
    resumed = PolicyLearner(model_dir, ModelConfig(), _config("deepspeed"), GRPOConfig(), seed=0, rank=rank, world_size=world)
    resumed.load_checkpoint(ckpt)
    results["resumed"] = _train(resumed, shard, STEPS - 1)
    results["params_equal"] = [float(torch.equal(_flat(first), _flat(resumed)))]
    results["partitions"] = [float(len(list(ckpt.glob("strategy_rank*.safetensors"))))]
    Path(f"{out_dir}/rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.timeout(600)
def test_torch_and_zero2_match_on_two_gloo_ranks_and_zero2_resumes_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tiny_dir), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["torch"] == ranks[1]["torch"]  # metrics are reduced over ranks: both see the same

    single = PolicyLearner(tiny_dir, ModelConfig(), _config("torch"), GRPOConfig(), seed=0)
    single_losses = _train(single, _examples(), STEPS)
    torch_losses, ds_losses = ranks[0]["torch"], ranks[0]["deepspeed"]
    assert single_losses[-1] < single_losses[0]  # the steps do something
    np.testing.assert_allclose(torch_losses, single_losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ds_losses, torch_losses, rtol=0, atol=1e-5)
    reference = _flat(single).numpy()
    for strategy in ("torch", "deepspeed"):
        for rank in range(2):
            np.testing.assert_allclose(np.load(tmp_path / f"{strategy}_rank{rank}.npy"), reference, atol=1e-5)

    for rank in ranks:
        assert rank["partitions"] == [2.0]  # one ZeRO partition per rank in the checkpoint
        assert rank["resumed"] == rank["straight"]
        assert rank["params_equal"] == [1.0]
