"""Inference-only models: the solver scored option by option (evaluation) and the reward model R scoring
samples (the scorer pool). No optimizer, no strategy, no LoRA wrapper, eval mode, no autograd.

Evaluation and the scorer pool used to build a full training learner just to score: AdamW state, a
DeepSpeed engine when the config names one, and gradients enabled on every weight; at 7B that is ~3x the
model's memory and does not fit beside an engine. These classes load the same directory the same way
and run the very functions the learners use (`score_completion_rows`, `reward_forward`, below; the
learners call them too), so their numbers are the learners' to the bit.

`PolicyScorer` implements `eval.protocols.OptionScorer`; `RewardScorer` gives R(image, question, answer)
for rendered samples and takes published weights in place. No Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medgr2_ray.config import ModelConfig
from medgr2_ray.learner.microbatch import split_micro_batches
from medgr2_ray.learner.trainer import select_device
from medgr2_ray.models.loading import LoadedVLM, load_vlm
from medgr2_ray.models.logprobs import shared_prompt_logprobs
from medgr2_ray.models.processing import (
    check_request,
    encode_prompts,
    encode_shared_prompt_completions,
)
from medgr2_ray.models.reward_head import (
    HEAD_FILE,
    RewardModel,
    RewardOutput,
    VerifierInit,
)
from medgr2_ray.models.verifier import encode_verdicts
from medgr2_ray.types import GenerationRequest, RewardObjective


def target_token_ids(loaded: LoadedVLM, eos_id: int, text: str) -> tuple[int, ...]:
    """Completion tokens for a target text: the text, then end-of-turn (so the model learns to stop)."""
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    return (*[int(i) for i in ids], eos_id)


def score_completion_rows(
    model: torch.nn.Module, loaded: LoadedVLM, device: torch.device, requests: Sequence[GenerationRequest],
    completions: Sequence[Sequence[int]], temperature: float, micro_batch_size: int,
) -> list[np.ndarray]:
    """Log-probs of given completion tokens under `model`, one float32 array per row, in micro-batches.

    The caller puts the model in eval mode and turns autograd off (a learner does it for the call only).
    A prompt shared by several rows (the same request object) is run once (`models/logprobs.py`).
    """
    out: list[np.ndarray] = []
    rows = list(zip(requests, completions))
    for batch in split_micro_batches(rows, micro_batch_size):
        encoded = encode_shared_prompt_completions(loaded, [r for r, _ in batch], [c for _, c in batch])
        logprobs, _ = shared_prompt_logprobs(model, encoded.to(device), temperature)
        out.extend(logprobs[i, : len(c)].float().cpu().numpy() for i, (_, c) in enumerate(batch))
    return out


def load_reward_model(model_dir: str | Path, model_cfg: ModelConfig, seed: int,
                      objective: RewardObjective) -> RewardModel:
    """R from a directory: its saved head when it has one, else a new head seeded by `seed` on the VLM
    backbone (a verifier head when `objective.verifier`). Seeds torch first, as the learner always has."""
    torch.manual_seed(seed)
    if (Path(model_dir) / HEAD_FILE).is_file():
        return RewardModel.from_pretrained(model_dir, model_cfg.dtype, model_cfg.trust_remote_code)
    init = VerifierInit(objective.low, objective.high) if objective.verifier else None
    return RewardModel.from_backbone(model_dir, model_cfg.dtype, model_cfg.trust_remote_code, seed=seed, verifier=init)


def reward_forward(reward_model: RewardModel, model: torch.nn.Module, requests: Sequence[GenerationRequest],
                   eos_id: int, device: torch.device, regress: bool = True) -> RewardOutput:
    """R on a micro-batch through `model` (R itself, or a training wrapper of it): the rendered samples
    and, for a verifier, their stated answers (`regress=False`: the answers only)."""
    loaded = reward_model.loaded
    verdict = encode_verdicts(loaded, requests, eos_id) if reward_model.is_verifier else None
    if verdict is not None:
        verdict = replace(verdict, inputs=verdict.inputs.to(device),
                          completion_mask=verdict.completion_mask.to(device),
                          answer_row=verdict.answer_row.to(device))
        if not regress:  # answering only: the rendered samples are not even encoded
            return model(None, verdict, verdict_only=True)
    inputs = encode_prompts(loaded, requests, padding_side="left").to(device)
    if verdict is None:  # a scalar head, or a padding batch with nothing to answer
        return model(inputs)
    return model(inputs, verdict)


def reward_scores(reward_model: RewardModel, requests: Sequence[GenerationRequest], eos_id: int,
                  device: torch.device, micro_batch_size: int) -> list[float]:
    """R's score per request; NaN for one that cannot be encoded, or that a verifier cannot answer
    (no sample), so positions line up. The caller sets eval mode and turns autograd off."""
    out = [math.nan] * len(requests)
    good = [i for i, r in enumerate(requests) if check_request(r) is None
            and (r.sample is not None or not reward_model.is_verifier)]
    for batch in split_micro_batches(good, micro_batch_size):
        scores = reward_forward(reward_model, reward_model, [requests[i] for i in batch], eos_id, device).score
        for i, value in zip(batch, scores.float().cpu().tolist()):
            out[i] = float(value)
    return out


def _frozen(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` on `device`, in eval mode, with no parameter asking for gradients."""
    return model.to(device).eval().requires_grad_(False)


class PolicyScorer:
    """The solver for evaluation: log-probs of given completions (`eval.protocols.OptionScorer`)."""

    def __init__(self, model_dir: str | Path, model_cfg: ModelConfig, micro_batch_size: int,
                 temperature: float = 1.0, local_rank: int = 0) -> None:
        if model_cfg.lora.enabled:
            # A model directory is always whole (LoRA merged when saved): scoring needs no adapters.
            model_cfg = model_cfg.model_copy(update={"lora": model_cfg.lora.model_copy(update={"enabled": False})})
        self.loaded = load_vlm(model_dir, model_cfg.dtype, model_cfg.trust_remote_code)
        self.device = select_device(local_rank)
        self.model = _frozen(self.loaded.model, self.device)
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.eos_id = int(self.loaded.tokenizer.eos_token_id)

    def target_token_ids(self, text: str) -> tuple[int, ...]:
        """Completion tokens for a target text: the text, then end-of-turn."""
        return target_token_ids(self.loaded, self.eos_id, text)

    @torch.no_grad()
    def score_completions(self, requests: Sequence[GenerationRequest], completions: Sequence[Sequence[int]],
                          temperature: float | None = None) -> list[np.ndarray]:
        """Log-probs of given completion tokens, one array per row (`temperature` defaults to the scorer's)."""
        temp = self.temperature if temperature is None else temperature
        return score_completion_rows(self.model, self.loaded, self.device, requests, completions, temp,
                                     self.micro_batch_size)


class RewardScorer:
    """R for inference: scores rendered samples and takes published full weights in place."""

    def __init__(self, model_dir: str | Path, model_cfg: ModelConfig, micro_batch_size: int, seed: int,
                 objective: RewardObjective | None = None, local_rank: int = 0) -> None:
        # LoRA (if R trains with it) arrives merged in published weights: the scorer's model is plain.
        self.reward_model = load_reward_model(model_dir, model_cfg, seed, objective or RewardObjective())
        self.device = select_device(local_rank)
        self.model = _frozen(self.reward_model, self.device)
        self.micro_batch_size = micro_batch_size
        self.eos_id = int(self.reward_model.loaded.tokenizer.eos_token_id)

    @torch.no_grad()
    def score(self, requests: Sequence[GenerationRequest]) -> list[float]:
        """R's score for each request (NaN where it cannot score one; see `reward_scores`)."""
        return reward_scores(self.reward_model, requests, self.eos_id, self.device, self.micro_batch_size)

    @torch.no_grad()
    def load_state(self, named: Mapping[str, torch.Tensor]) -> None:
        """Replace every weight (backbone + head, names as `RewardLearner.export_state` gives them) in place;
        the names must match exactly."""
        self.model.load_state_dict(dict(named), strict=True)
