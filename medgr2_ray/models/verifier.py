"""R's own answer to a sample: the generative-verifier feature of the MedGR² reward model.

A scalar head on a small backbone that reads the rendered sample learns which texts are garbled, but
not whether the stated answer fits the image (measured here: faithful, perturbed and irrelevant samples
scored alike to two decimals, whatever the pooling, learning rate or initialisation). Answering the
question is what a VLM does learn (the solver does), so R also answers it: the stated answer's text is
teacher-forced after the solver's prompt with the sample's image, and its sequence probability
p(answer | image, question) is the verdict. The head adds `verdict_weight * p` to its scalar.

Why the sequence probability and not a softmax over the options: one row per sample instead of one per
option (R's step time is its rows' forward and backward), it needs no options (free-text answers work),
and its loss on a right answer is exactly the SFT loss the solver learns from.

Samples that share image, question and answer are encoded once. Pure torch over `VLMInputs`; the
log-probs come from `logprobs.completion_logprobs` (logits of the completion positions only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medgr2_ray.models.loading import LoadedVLM
from medgr2_ray.models.logprobs import completion_logprobs
from medgr2_ray.models.processing import VLMInputs, encode_prompt_completions
from medgr2_ray.prompts import solver_prompt
from medgr2_ray.types import GenerationRequest


@dataclass(frozen=True)
class VerdictInputs:
    """Teacher-forced stated answers of a batch of B samples: N <= B distinct rows."""

    inputs: VLMInputs  # N rows: the solver prompt with the image, then the answer's tokens and end-of-turn
    completion_mask: torch.Tensor  # [N, L] bool: the answer's tokens
    answer_row: torch.Tensor  # [B] long: each sample's row, -1 when it has no question to answer


@dataclass(frozen=True)
class Verdict:
    """R's belief in each sample's stated answer."""

    logprob: torch.Tensor  # [B] log p(stated answer | image, question); 0 where there is none
    has: torch.Tensor  # [B] bool: the sample carried a question and an answer R could weigh

    @property
    def prob(self) -> torch.Tensor:
        """p(stated answer), 0 where there is no verdict."""
        return torch.where(self.has, self.logprob.exp(), torch.zeros_like(self.logprob))


def encode_verdicts(loaded: LoadedVLM, requests: Sequence[GenerationRequest], eos_id: int) -> VerdictInputs | None:
    """One row per distinct (image, question, stated answer) among the requests that carry a sample
    with a non-empty answer (None when none does)."""
    row_of: dict[tuple[int, str, str], int] = {}
    rows: list[tuple[GenerationRequest, tuple[int, ...]]] = []
    answer_row = [-1] * len(requests)
    for b, request in enumerate(requests):
        sample = request.sample
        if sample is None or not sample.answer.strip():
            continue
        prompt = solver_prompt(sample)
        key = (id(request.images[0]) if request.images else 0, prompt, sample.answer)
        if key not in row_of:  # the same image object, question and answer: scored once
            row_of[key] = len(rows)
            ids = loaded.tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
            verify = GenerationRequest(f"verify:{request.request_id}", prompt, request.images)
            rows.append((verify, (*[int(i) for i in ids], eos_id)))
        answer_row[b] = row_of[key]
    if not rows:
        return None
    inputs, mask = encode_prompt_completions(loaded, [r for r, _ in rows], [c for _, c in rows], padding_side="left")
    return VerdictInputs(inputs, mask, torch.tensor(answer_row))


def verdicts(model: torch.nn.Module, verdict_inputs: VerdictInputs) -> Verdict:
    """log p(stated answer | image, question) per sample: the sum of its tokens' log-probs."""
    logprobs, _ = completion_logprobs(model, verdict_inputs.inputs, verdict_inputs.completion_mask)
    per_row = logprobs.sum(dim=1)  # [N]
    answer_row = verdict_inputs.answer_row.to(per_row.device)
    has = answer_row >= 0
    logprob = torch.where(has, per_row[answer_row.clamp(min=0)], torch.zeros_like(answer_row, dtype=per_row.dtype))
    return Verdict(logprob, has)
