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

Shared prompts (`shared_prompt_logprobs`, what GRPO scores with): a group's G completions share one
prompt, image included, and causal attention means the prompt's hidden states do not depend on what
follows. So the distinct prompts are prefilled once, each row gets a copy of its prompt's KV cache
(an index into the batch dimension: autograd sums the G copies' gradients back into the one prefill),
and only the completion tokens run per row. The log-probs and gradients are those of the full
teacher-forced forward (to float rounding: tests check it); the vision tower and the prompt's layers
run once per group instead of once per completion, as the engine's prefill does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from medgr2_ray.models.processing import PromptCompletions, VLMInputs, forward_kwargs


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


def _token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs, entropy) [B, T] of `targets` [B, T] under `logits` [B, T, V] (row b, slot t predicts
    target t), zero where not `valid`. Gradients flow through the log-probs; the entropy carries none."""
    scale = temperature if temperature > 0 else 1.0
    scaled = logits.float() / scale
    lse = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        probs = torch.softmax(scaled, dim=-1)
        entropy = lse - (probs * scaled).sum(dim=-1)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return torch.where(valid, logprobs, zero), torch.where(valid, entropy, zero)


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
    index = (positions - 1 - tail.start).clamp(min=0)  # [B, T] into the kept window
    picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # [B, T, V]
    return _token_logprobs(picked, inputs.input_ids.gather(1, positions), valid, temperature)


def kv_cache_argument(model: torch.nn.Module) -> str:
    """The name under which this transformers version's forward takes (and its output returns) the KV
    cache: `cache` in recent 5.x releases, `past_key_values` before (5.17-5.22 among those the GPU
    extras' vLLM allows). Asked of the Hugging Face model itself, below a DeepSpeed engine or PEFT
    wrapper (whose forwards take **kwargs and would hide the name)."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _prefix(inputs: VLMInputs, end: int) -> VLMInputs:
    """The first `end` positions of a batch (its images stay: their tokens lie in that window)."""
    return VLMInputs(inputs.input_ids[:, :end], inputs.attention_mask[:, :end], inputs.position_ids[:, :, :end],
                     inputs.mm_token_type_ids[:, :end], inputs.pixel_values, inputs.image_grid_thw)


def shared_prompt_logits(model: torch.nn.Module, batch: PromptCompletions) -> torch.Tensor:
    """Logits [B, T, V], slot t predicting completion token t of row b.

    The distinct prompts but their last token are prefilled once; each row then runs [last prompt token,
    completion tokens but the last] through a copy of its prompt's KV cache, so every logit it needs
    comes out of that one forward. (The prompts are left-padded: their last token is the last position,
    and it is text, the assistant header's end.)
    """
    prompts, row_of = batch.prompts, batch.row_of
    length = prompts.input_ids.shape[1]
    if length < 2:
        raise ValueError("a prompt needs at least two tokens to be scored against")
    cache_arg = kv_cache_argument(model)
    out = model(**forward_kwargs(_prefix(prompts, length - 1)), use_cache=True, logits_to_keep=1)
    cache = getattr(out, cache_arg)
    cache.batch_select_indices(row_of)
    width = batch.completion_ids.shape[1]
    last = prompts.input_ids[:, -1:].index_select(0, row_of)
    input_ids = torch.cat([last, batch.completion_ids[:, : width - 1]], dim=1)
    attention = torch.cat([prompts.attention_mask.index_select(0, row_of),
                           batch.completion_mask[:, : width - 1].to(prompts.attention_mask.dtype)], dim=1)
    # The last prompt token keeps its position; the completion's text positions continue after the prompt.
    last_position = prompts.position_ids[:, :, -1:].index_select(1, row_of)
    start = prompts.next_text_position().index_select(0, row_of)
    following = (start[:, None] + torch.arange(width - 1, device=start.device)[None, :]).unsqueeze(0).expand(3, -1, -1)
    positions = torch.cat([last_position, following], dim=2)
    rest = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                 **{cache_arg: cache})
    return rest.logits


def shared_prompt_logprobs(
    model: torch.nn.Module, batch: PromptCompletions, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logprobs` for a `PromptCompletions` batch: each distinct prompt is run once."""
    logits = shared_prompt_logits(model, batch)
    return _token_logprobs(logits, batch.completion_ids, batch.completion_mask, temperature)
