"""Per-token log-probs and entropies of completion tokens, computed the memory-aware way.

The learner needs log p(token_t | tokens_<t) for the completion tokens only, in exactly the
definition the rollout engine used when it recorded behaviour log-probs (`engines/base.py`): the
softmax of logits / temperature, temperature <= 0 (greedy) scored at temperature 1.

Memory: the full logits tensor is [B, L, V] where L counts the prompt and the image tokens too. We ask
the model for logits of the last `k` positions only (`logits_to_keep`), where k reaches back to the
first completion token of the batch. Encoded with left padding (`padding_side="left"`), every
completion ends at the last position, so k = longest completion + 1 and no prompt logits are ever
made. The chosen token's log-prob is `logit - logsumexp(logits)` gathered per token, so no [.., V]
log-softmax copy is kept beyond what autograd needs; the entropy (a metric) is computed without grad.

Output layout: compact [B, T] with T the longest completion; row i holds its n_i completion tokens in
positions 0..n_i-1 (the same layout as `Rollout.logprobs`), zeros after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medgr2_ray.models.processing import VLMInputs, forward_kwargs


def completion_positions(completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [B, T], valid [B, T]): the sequence index of each row's completion tokens, compacted.

    The completion of a row must be one contiguous span (what `encode_prompt_completions` produces).
    """
    mask = completion_mask.bool()
    lengths = mask.sum(dim=1)
    width = int(lengths.max().item()) if mask.numel() else 0
    first = torch.where(lengths > 0, mask.float().argmax(dim=1), torch.zeros_like(lengths))
    offsets = torch.arange(width, device=mask.device).unsqueeze(0)
    valid = offsets < lengths.unsqueeze(1)
    positions = torch.where(valid, first.unsqueeze(1) + offsets, torch.zeros_like(offsets))
    if bool((mask.gather(1, positions) != valid).any()):
        raise ValueError("completion_mask must mark one contiguous span per row (prompt, then completion)")
    return positions, valid


@dataclass(frozen=True)
class TailLogits:
    """Logits of the positions `start..L-1` only: enough to score every completion token of the batch."""

    logits: torch.Tensor  # [B, L - start, V]
    start: int


def forward_tail(model: torch.nn.Module, inputs: VLMInputs, completion_mask: torch.Tensor) -> TailLogits:
    """One forward that materialises logits only from the position predicting the first completion token.

    `model` is called as-is (a PEFT model, a DeepSpeed engine and a plain HF model all work), so
    gradients flow into whatever it trains.
    """
    mask = completion_mask.bool()
    if not bool(mask.any()):
        raise ValueError("completion_mask marks no token: there is nothing to score")
    first = int(mask.float().argmax(dim=1)[mask.any(dim=1)].min().item())
    if first == 0:
        raise ValueError("a completion cannot start at position 0: it needs at least one prompt token")
    start = first - 1  # logits at position p predict token p + 1
    length = inputs.input_ids.shape[1]
    out = model(**forward_kwargs(inputs), logits_to_keep=length - start, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return TailLogits(logits=logits, start=start)


def completion_logprobs(
    model: torch.nn.Module, inputs: VLMInputs, completion_mask: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs [B, T], entropy [B, T]) of the completion tokens under softmax(logits / temperature).

    Gradients flow through the log-probs into what `model` trains; the entropy carries none.
    """
    positions, valid = completion_positions(completion_mask)
    if positions.shape[1] == 0:
        empty = torch.zeros(positions.shape, dtype=torch.float32)
        return empty, empty
    tail = forward_tail(model, inputs, completion_mask)
    logits = tail.logits
    scale = temperature if temperature > 0 else 1.0
    index = (positions - 1 - tail.start).clamp(min=0)  # [B, T] into the kept window
    picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # [B, T, V]
    scaled = picked.float() / scale
    targets = inputs.input_ids.gather(1, positions)
    lse = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        probs = torch.softmax(scaled, dim=-1)
        entropy = lse - (probs * scaled).sum(dim=-1)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return torch.where(valid, logprobs, zero), torch.where(valid, entropy, zero)
