"""Mechanics of a policy step: what changes, what must not, what is counted, and exact resume.

- parameters actually change after SFT and GRPO steps (full fine-tuning);
- LoRA trains only adapter weights; its export is LoRA-only, its merged export equals the PEFT model;
- micro-batching with the global normaliser gives the same update as one big batch;
- malformed and uninformative groups are dropped *and counted*; an all-uniform step is skipped;
- the KL reference is the LoRA-disabled base: zero KL before any update, positive after;
- resume: checkpoint at step k, reload into a fresh learner, steps k+1..k+3 equal an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.checkpoint import CheckpointError
from medgr2_ray.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig
from medgr2_ray.learner.policy import PolicyLearner
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.models.processing import encode_prompts, forward_kwargs
from medgr2_ray.sync.flat import unpack_tensors
from medgr2_ray.types import GenerationRequest, Rollout, ScoredGroup, SFTExample


def _rollout(request_id: str, index: int, tokens: tuple[int, ...], logprob: float = -7.0) -> Rollout:
    return Rollout(request_id, index, (), tokens, "", np.full(len(tokens), logprob, np.float32), "length", 0)


def make_groups(requests: list[GenerationRequest], rewards: list[list[float]]) -> list[ScoredGroup]:
    """Groups of fixed completions (distinct token ids per rollout) with the given rewards."""
    groups = []
    for g, (request, row) in enumerate(zip(requests, rewards)):
        rollouts = tuple(_rollout(request.request_id, i, tuple(600 + 10 * g + i + k for k in range(2 + i))) for i in range(len(row)))
        groups.append(ScoredGroup(f"g{g}", request, rollouts, np.asarray(row, np.float32)))
    return groups


def _snapshot(learner: PolicyLearner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], learner: PolicyLearner) -> set[str]:
    return {n for n, p in learner.model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_full_training_changes_parameters(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(lr=1e-3), GRPOConfig(), seed=0)
    before = _snapshot(learner)
    learner.sft_step([SFTExample(r, "CT") for r in mixed_requests])
    changed = _changed(before, learner)
    assert any("lm_head" in n for n in changed) and any("layers.0.self_attn.q_proj" in n for n in changed)
    assert any("visual" in n for n in changed)  # image examples train the vision tower too
    before = _snapshot(learner)
    metrics = learner.grpo_step(make_groups(mixed_requests, [[1, 0, 0], [0, 1, 1], [0.5, 0.5, 0.0]]))
    assert metrics["skipped"] == 0.0 and metrics["groups_trained"] == 3 and learner.version == 2
    assert _changed(before, learner)
    assert learner.export_weights().lora_only is False


def test_lora_changes_only_adapters_and_exports_them(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    lora = LoraConfig(enabled=True, r=4, alpha=8)
    learner = PolicyLearner(tiny_dir, ModelConfig(lora=lora), LearnerConfig(lr=1e-2), GRPOConfig(), seed=0)
    before = _snapshot(learner)
    for _ in range(2):
        learner.sft_step([SFTExample(r, "MR") for r in mixed_requests])
    changed = _changed(before, learner)
    assert changed and all(".lora_" in n for n in changed)
    assert any(".lora_B." in n for n in changed)  # B starts at zero: it must have moved for LoRA to matter

    flat = learner.export_weights()
    names = [spec.name for spec in flat.index]
    assert flat.lora_only and names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 2 * 4 * 2  # A and B for q/k/v/o in each of the 2 text layers

    # The merged export is a plain model state that reproduces the PEFT model's logits exactly.
    merged = unpack_tensors(learner.export_weights(merged=True))
    assert not any(".lora_" in n or "base_layer" in n for n in merged)
    plain = load_vlm(tiny_dir)
    plain.model.load_state_dict(merged, strict=True)
    inputs = encode_prompts(plain, mixed_requests)
    with torch.no_grad(), learner.evaluating():
        want = learner.model(**forward_kwargs(inputs)).logits
        got = plain.model(**forward_kwargs(inputs)).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_micro_batching_equals_one_big_batch(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    groups = make_groups(mixed_requests, [[1, 0, 0], [0, 1, 1], [2, 0.5, 0.0]])
    results = []
    for micro in (1, 2, 16):  # 9 rows: 9 micro-batches, 5 (ragged), 1
        learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(micro_batch_size=micro), GRPOConfig(), seed=0)
        metrics = learner.accumulate_grpo(groups)
        grads = torch.cat([p.grad.reshape(-1) for p in learner.model.parameters() if p.grad is not None])
        results.append((metrics, grads))
    (_, full_grad) = results[2]
    assert full_grad.abs().max() > 0
    for metrics, grads in results[:2]:
        assert metrics["loss"] == pytest.approx(results[2][0]["loss"], abs=1e-6)
        assert metrics["tokens"] == results[2][0]["tokens"] == 27
        assert torch.allclose(grads, full_grad, atol=1e-6, rtol=1e-4)


def test_bad_and_uniform_groups_are_dropped_and_counted(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(), GRPOConfig(), seed=0)
    good, uniform, nan = make_groups(mixed_requests, [[1, 0, 0], [1, 1, 1], [0, 1, float("nan")]])
    short = ScoredGroup("short", good.request, good.rollouts, np.asarray([1.0, 0.0], np.float32))
    broken = (good.rollouts[0], _rollout("ct", 1, ()), good.rollouts[2])  # an empty completion
    empty = ScoredGroup("empty", good.request, broken, np.asarray([1.0, 0.0, 0.0], np.float32))
    float_image = GenerationRequest("bad", "what?", images=(np.zeros((8, 8, 3), np.float32),))
    bad_request = ScoredGroup("bad", float_image, good.rollouts, good.rewards)
    metrics = learner.grpo_step([good, uniform, nan, short, empty, bad_request])
    assert metrics["groups_in"] == 6 and metrics["groups_trained"] == 2
    assert metrics["groups_dropped_bad_request"] == 1
    assert metrics["groups_dropped_uniform"] == 1
    assert metrics["groups_dropped_rewards_nonfinite"] == 1 and metrics["groups_dropped_rewards_mismatch"] == 1
    assert metrics["rollouts_dropped_empty"] == 1 and metrics["rows"] == 5
    assert learner.version == 1

    skipped = learner.grpo_step([uniform])
    assert skipped["skipped"] == 1.0 and learner.version == 1  # nothing to learn: no step, same version

    sft = learner.sft_step([SFTExample(mixed_requests[0], "CT"), SFTExample(float_image, "CT")])
    assert sft["examples_dropped_bad_request"] == 1 and sft["skipped"] == 0.0 and learner.version == 2


def test_kl_reference_is_the_lora_disabled_base(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    model_cfg = ModelConfig(lora=LoraConfig(enabled=True, r=4, alpha=8))
    learner = PolicyLearner(tiny_dir, model_cfg, LearnerConfig(lr=2e-2), GRPOConfig(kl_coef=0.1), seed=0)
    groups = make_groups(mixed_requests, [[1, 0, 0], [0, 1, 1], [2, 0.5, 0.0]])
    first = learner.grpo_step(groups)
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # B = 0: the adapted model is the base
    for _ in range(3):
        last = learner.grpo_step(groups)
    assert last["kl"] > 1e-6


def _run(learner: PolicyLearner, batches: list[list[SFTExample]]) -> list[float]:
    return [learner.sft_step(batch)["loss"] for batch in batches]


def test_resume_continues_exactly(tiny_dir: Path, mixed_requests: list[GenerationRequest], tmp_path: Path) -> None:
    # LoRA dropout makes every step consume RNG; warm-up + cosine make the schedule position matter.
    model_cfg = ModelConfig(lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1))
    cfg = LearnerConfig(lr=5e-3, warmup_steps=2, schedule="cosine", schedule_steps=8, micro_batch_size=2)
    batches = [[SFTExample(r, f"answer {k} {r.request_id}") for r in mixed_requests] for k in range(6)]

    straight = PolicyLearner(tiny_dir, model_cfg, cfg, GRPOConfig(), seed=3)
    first = _run(straight, batches[:3])
    straight.save_checkpoint(tmp_path / "ckpt", extra={"data_cursor": 3})
    expected = _run(straight, batches[3:])

    resumed = PolicyLearner(tiny_dir, model_cfg, cfg, GRPOConfig(), seed=3)
    torch.manual_seed(12345)  # a different RNG stream: only the checkpoint can make the runs agree
    assert resumed.load_checkpoint(tmp_path / "ckpt") == {"data_cursor": 3}
    assert resumed.version == 3
    got = _run(resumed, batches[3:])
    assert got == expected, (first, expected, got)
    for (n, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), n

    full = PolicyLearner(tiny_dir, ModelConfig(), cfg, GRPOConfig(), seed=3)
    with pytest.raises(CheckpointError, match="lora"):
        full.load_checkpoint(tmp_path / "ckpt")


def test_sampled_vision_placeholder_is_dropped_and_counted(tiny_dir: Path, mixed_requests: list[GenerationRequest]) -> None:
    # A tiny policy can sample <|image_pad|>; re-encoding it as completion text would break M-RoPE.
    learner = PolicyLearner(tiny_dir, ModelConfig(), LearnerConfig(), GRPOConfig(), seed=0)
    (good,) = make_groups(mixed_requests[:1], [[1, 0, 0]])
    pad = learner.loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    rollouts = (good.rollouts[0], _rollout(good.request.request_id, 1, (5, pad, 6)), good.rollouts[2])
    metrics = learner.grpo_step([ScoredGroup("vision", good.request, rollouts, good.rewards)])
    assert metrics["rollouts_dropped_vision_token"] == 1 and metrics["rows"] == 2
    assert metrics["groups_trained"] == 1 and learner.version == 1
