"""Log-prob agreement: the learner scores exactly what the engine sampled, before and after training.

The classic silent RL bug is an engine and a learner that disagree on a token's log-prob (positions,
padding, temperature, a stale weight). These tests sample with the real HF engine, teacher-force the
same tokens through the learner, and demand max |diff| < 1e-4 (fp32), with and without images and
with padding; then they train, ship `export_weights()` to the engine, and check again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import EngineConfig, GRPOConfig, LearnerConfig, LoraConfig, ModelConfig
from medgr2_ray.engines.hf import HFEngine
from medgr2_ray.models.logprobs import completion_logprobs, completion_positions, forward_tail, shared_prompt_logprobs
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.models.processing import completion_logprobs as reference_logprobs
from medgr2_ray.models.processing import encode_prompt_completions, encode_shared_prompt_completions, forward_kwargs
from medgr2_ray.types import GenerationRequest, SamplingParams, SFTExample

TEMPERATURE = 0.8


def _max_diff(engine: HFEngine, learner: PolicyLearner, requests: list[GenerationRequest]) -> dict[str, float]:
    """Sample with the engine, score with the learner; max |diff| per request id."""
    # Stop strings end rows at different lengths, so completions are padded too (a random tiny model
    # rarely emits end-of-turn by itself).
    sampling = SamplingParams(n=2, temperature=TEMPERATURE, max_new_tokens=10, stop=("e", "o"), seed=5)
    rollouts = engine.generate(requests, sampling)
    by_id = {r.request_id: r for r in requests}
    scored = learner.score_completions([by_id[r.request_id] for r in rollouts], [r.completion_token_ids for r in rollouts])
    assert len({len(r.completion_token_ids) for r in rollouts}) > 1 or len(rollouts) == 1, "want ragged completions"
    diffs: dict[str, float] = {}
    for rollout, mine in zip(rollouts, scored):
        assert mine.shape == rollout.logprobs.shape
        d = float(np.abs(mine - rollout.logprobs).max())
        diffs[rollout.request_id] = max(diffs.get(rollout.request_id, 0.0), d)
    return diffs


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_engine_and_learner_logprobs_agree_before_and_after_training(
    tiny_dir: Path, mixed_requests: list[GenerationRequest], lora: bool
) -> None:
    model_cfg = ModelConfig(lora=LoraConfig(enabled=lora, r=4, alpha=8))
    engine = HFEngine(tiny_dir, model_cfg, EngineConfig(max_batch_size=4), seed=0)
    learner = PolicyLearner(tiny_dir, model_cfg, LearnerConfig(lr=5e-3, micro_batch_size=4), GRPOConfig(temperature=TEMPERATURE), seed=0)

    before = _max_diff(engine, learner, mixed_requests)
    assert set(before) == {"ct", "text", "mr"}  # images of two sizes and text only, in one padded batch
    assert max(before.values()) < 1e-4, before

    examples = [SFTExample(r, "MR") for r in mixed_requests]
    for _ in range(3):
        learner.sft_step(examples)
    stale = _max_diff(engine, learner, mixed_requests)
    assert max(stale.values()) > 1e-3, "training must move the log-probs (else the check below proves nothing)"
    engine.load_weights(learner.export_weights(), learner.version)
    after = _max_diff(engine, learner, mixed_requests)
    assert max(after.values()) < 1e-4, after


def test_only_the_completion_window_gets_logits(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    loaded = load_vlm(tiny_dir)
    completions = [[700, 701, 702, 703], [900], [1000, 1001, 1002, 1003, 1004, 1005]]
    results = {}
    for side in ("left", "right"):
        inputs, mask = encode_prompt_completions(loaded, mixed_requests, completions, padding_side=side)
        with torch.no_grad():
            tail = forward_tail(loaded.model, inputs, mask)
            logprobs, entropy = completion_logprobs(loaded.model, inputs, mask, TEMPERATURE)
            full = loaded.model(**forward_kwargs(inputs)).logits
        if side == "left":  # every completion ends at the last position: only 6 + 1 logit rows exist
            assert tail.logits.shape[1] == 7 < inputs.input_ids.shape[1]
        ref = reference_logprobs(full, inputs.input_ids, mask, TEMPERATURE)
        positions, valid = completion_positions(mask)
        assert torch.allclose(logprobs[valid], ref.gather(1, positions)[valid], atol=1e-5)
        assert (logprobs[~valid] == 0).all() and (entropy[valid] > 0).all()
        # Entropy of softmax(full / T) at the predicting positions, computed independently.
        p = torch.softmax(full[:, :-1] / TEMPERATURE, dim=-1)
        ent_full = -(p * p.log()).sum(-1)
        assert torch.allclose(entropy[valid], ent_full.gather(1, (positions - 1).clamp(min=0))[valid], atol=1e-4)
        results[side] = logprobs
    assert torch.allclose(results["left"], results["right"], atol=1e-5)


def test_shared_prompts_give_the_full_forwards_logprobs_and_gradients(
    tiny_dir: Path, mixed_requests: list[GenerationRequest]
) -> None:
    # Three completions per request object (a GRPO group), ragged, in an interleaved order: one prefill
    # per distinct prompt must give the log-probs, entropies and parameter gradients of one full
    # teacher-forced forward per row.
    loaded = load_vlm(tiny_dir)
    model = loaded.model.eval()
    order = [0, 1, 2, 0, 2, 1, 2, 0, 1]
    requests = [mixed_requests[i] for i in order]
    completions = [[700 + k] * (1 + (k * 5) % 7) for k in range(len(order))]
    weights = torch.linspace(-1.0, 2.0, len(order))[:, None]

    def grads(logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        (logprobs * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    images_seen: list[int] = []
    hook = model.model.visual.register_forward_hook(lambda m, args, kw, out: images_seen.append(len(kw["grid_thw"])),
                                                    with_kwargs=True)
    try:
        shared = encode_shared_prompt_completions(loaded, requests, completions)
        assert shared.prompts.batch_size == 3 and shared.row_of.tolist() == order
        mine, mine_entropy = shared_prompt_logprobs(model, shared, TEMPERATURE)
        mine_grads = grads(mine)
        assert images_seen == [2]  # the two images of the distinct prompts, once
        inputs, mask = encode_prompt_completions(loaded, requests, completions, padding_side="left")
        ref, ref_entropy = completion_logprobs(model, inputs, mask, TEMPERATURE)
        ref_grads = grads(ref)
    finally:
        hook.remove()
    for i, row in enumerate(completions):  # the learner rebuilds the engine's sequence exactly
        assert shared.prompts.row_token_ids(order[i]) + row == inputs.row_token_ids(i)
    assert mine.shape == ref.shape and (mine[~shared.completion_mask] == 0).all()
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine_entropy, ref_entropy, atol=1e-5, rtol=0)
    assert set(mine_grads) == set(ref_grads) and any(".visual." in n for n in mine_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(mine_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_completion_mask_must_be_one_span_after_a_prompt() -> None:
    with pytest.raises(ValueError, match="contiguous span"):
        completion_positions(torch.tensor([[0, 1, 0, 1]], dtype=torch.bool))
    positions, valid = completion_positions(torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool))
    assert positions.tolist() == [[2, 3], [1, 0]] and valid.tolist() == [[True, True], [True, False]]
