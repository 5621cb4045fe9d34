"""The ONE place prompts become model inputs, shared by the rollout engine, the learner and the scorer.

Why one place: RL silently breaks when the engine and the learner disagree on a token id or a
position. Both call `encode_prompts` / `encode_prompt_completions`, so they see the same chat
template, the same image-token expansion and the same M-RoPE positions.

What it does for a batch of `GenerationRequest`s:
1. chat template: [system] + user(images first, then the prompt text) + the assistant header;
2. images (RGB uint8 HWC arrays) go through the model's image processor, which resizes them (for
   tiny models to at most `image_size`² pixels, see `models/tiny.py`) into patches and a grid
   (t, h, w) per image; each `<|image_pad|>` is expanded to t*h*w/merge² tokens;
3. padding (left for generation, right by default for teacher forcing) with an attention mask;
4. M-RoPE positions computed explicitly with the model's own `get_rope_index`, and passed to every
   forward: generation then continues text positions from max(prompt position) + 1, exactly what a
   teacher-forced forward over prompt + completion computes. Without them Qwen2-VL falls back to
   1-D positions and the log-probs are wrong;
5. a request object that several rows share (a GRPO group's completions) is encoded once
   (`distinct_requests`); `encode_shared_prompt_completions` keeps it once for scoring, so the learner
   runs it once too (`models/logprobs.shared_prompt_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from medgr2_ray.models.loading import LoadedVLM
from medgr2_ray.models.tokenizer import CHAT_TEMPLATE
from medgr2_ray.types import GenerationRequest

Padding = Literal["left", "right"]


@dataclass(frozen=True)
class VLMInputs:
    """Padded model inputs for a batch (B rows, L positions)."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    position_ids: torch.Tensor  # (3, B, L) long: M-RoPE (temporal, height, width); 0 on padding
    mm_token_type_ids: torch.Tensor  # (B, L) int: 0 text, 1 image token
    pixel_values: torch.Tensor | None  # (sum of patches, C*T*P*P) for all images of the batch, in order
    image_grid_thw: torch.Tensor | None  # (num_images, 3)

    @property
    def batch_size(self) -> int:
        """Rows in the batch."""
        return int(self.input_ids.shape[0])

    def row_token_ids(self, row: int) -> list[int]:
        """The non-padding token ids of one row."""
        return self.input_ids[row][self.attention_mask[row].bool()].tolist()

    def next_text_position(self) -> torch.Tensor:
        """(B,) the M-RoPE position of the token after each row: text continues from the prompt's largest
        position + 1, on all three axes (what a teacher-forced forward over prompt + completion computes)."""
        return self.position_ids.amax(dim=(0, 2)) + 1

    def to(self, device: torch.device) -> VLMInputs:
        """A copy with every tensor on `device` (no-op on the CPU)."""
        if device.type == "cpu":
            return self
        moved = (getattr(self, f) for f in VLMInputs.__dataclass_fields__)
        return VLMInputs(*(None if t is None else t.to(device) for t in moved))


def forward_kwargs(inputs: VLMInputs) -> dict[str, Any]:
    """Keyword arguments for a Qwen2-VL-style model forward (positions explicit, images if any)."""
    kwargs: dict[str, Any] = {
        "input_ids": inputs.input_ids,
        "attention_mask": inputs.attention_mask,
        "position_ids": inputs.position_ids,
    }
    if inputs.pixel_values is not None:
        kwargs["pixel_values"] = inputs.pixel_values
        kwargs["image_grid_thw"] = inputs.image_grid_thw
        kwargs["mm_token_type_ids"] = inputs.mm_token_type_ids
    return kwargs


def _as_rgb(image: np.ndarray, request_id: str) -> np.ndarray:
    """Validate one request image: uint8 HxWx3 (grey HxW or HxWx1 is repeated to RGB)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"request '{request_id}': images must be uint8 numpy arrays (got {kind}); "
                         "convert with medgr2_ray.data ingestion first")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"request '{request_id}': image shape {image.shape} is not HxWx3 RGB")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


_PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def check_request(request: GenerationRequest) -> str | None:
    """Why `request` cannot be encoded, or None when it can. Callers that must not let one bad
    request fail a batch (actors) filter with this first and count what they drop."""
    try:
        for image in request.images:
            _as_rgb(image, request.request_id)
    except ValueError as exc:
        return str(exc)
    for text in (request.prompt, request.system):
        if any(p in text for p in _PLACEHOLDERS):
            return f"request '{request.request_id}': vision placeholder tokens must not appear in the text"
    return None


def _chat_text(loaded: LoadedVLM, request: GenerationRequest) -> str:
    """The prompt text through the model's chat template (ours when the tokenizer has none)."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in request.images]
    content.append({"type": "text", "text": request.prompt})
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
    messages.append({"role": "user", "content": content})
    template = None if getattr(loaded.tokenizer, "chat_template", None) else CHAT_TEMPLATE
    return loaded.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


def _special_id(loaded: LoadedVLM, name: str, default_token: str) -> int:
    value = getattr(loaded.model.config, name, None)
    return int(value) if value is not None else int(loaded.tokenizer.convert_tokens_to_ids(default_token))


def distinct_requests(requests: Sequence[GenerationRequest]) -> tuple[list[GenerationRequest], list[int]]:
    """(each request object once, in first-seen order; for every input row, its index in that list).

    A GRPO group is one request object repeated for each of its completions (and a request keeps its
    identity through Ray's pickling within one message), so its image is processed and its chat template
    tokenised once per batch, not once per completion: that was most of the encoding time of a step.
    Identity, not equality: two equal prompts built separately are simply encoded twice.
    """
    first: dict[int, int] = {}
    row_of = [first.setdefault(id(request), len(first)) for request in requests]
    distinct = list({id(r): r for r in requests}.values())
    return distinct, row_of


def _repeat_images(
    processed_pixels: torch.Tensor, grid: torch.Tensor, images_per_request: Sequence[int], row_of: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel values and grids of every row's images, in row order, from those of the distinct requests."""
    patches = grid.prod(dim=1).tolist()
    starts = np.concatenate([[0], np.cumsum(patches)]).astype(np.int64)
    first_image = np.concatenate([[0], np.cumsum(images_per_request)]).astype(np.int64)
    images = [img for u in row_of for img in range(first_image[u], first_image[u + 1])]
    if images == list(range(len(patches))):
        return processed_pixels, grid
    index = torch.from_numpy(np.concatenate([np.arange(starts[i], starts[i + 1]) for i in images]))
    return processed_pixels.index_select(0, index), grid[torch.tensor(images, dtype=torch.long)]


def _prompt_ids(
    loaded: LoadedVLM, requests: Sequence[GenerationRequest]
) -> tuple[list[list[int]], torch.Tensor | None, torch.Tensor | None]:
    """Token ids per request with image tokens expanded, plus the batch's pixel values and grids."""
    distinct, row_of = distinct_requests(requests)
    for request in distinct:
        if (problem := check_request(request)) is not None:
            raise ValueError(problem)
    images = [_as_rgb(img, r.request_id) for r in distinct for img in r.images]
    pixel_values = grid = None
    if images:
        processed = loaded.image_processor(images=images, return_tensors="pt")
        pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
    merge = int(getattr(loaded.image_processor, "merge_size", 2))
    image_id = _special_id(loaded, "image_token_id", "<|image_pad|>")
    rows: list[list[int]] = []
    next_image = 0
    for request in distinct:
        ids = loaded.tokenizer(_chat_text(loaded, request), add_special_tokens=False)["input_ids"]
        if ids.count(image_id) != len(request.images):
            raise ValueError(f"request '{request.request_id}': the prompt holds {ids.count(image_id)} image "
                             f"placeholders for {len(request.images)} images; do not write <|image_pad|> in text")
        expanded: list[int] = []
        for token in ids:
            if token == image_id:
                count = int(grid[next_image].prod()) // merge**2  # type: ignore[index]
                expanded.extend([image_id] * count)
                next_image += 1
            else:
                expanded.append(token)
        rows.append(expanded)
    if pixel_values is not None and grid is not None:
        pixel_values, grid = _repeat_images(pixel_values, grid, [len(r.images) for r in distinct], row_of)
    return [rows[u] for u in row_of], pixel_values, grid


def vlm_core(model: torch.nn.Module) -> Any:
    """The module with `get_rope_index` (Qwen2VLModel), below PEFT and ForConditionalGeneration."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = getattr(base, "model", base)
    if not hasattr(core, "get_rope_index"):
        raise TypeError(f"{type(base).__name__} has no get_rope_index: only Qwen2-VL-style models are supported")
    return core


def pad_batch(
    loaded: LoadedVLM, rows: Sequence[Sequence[int]], pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None, padding_side: Padding,
) -> VLMInputs:
    """Pad token-id rows and compute their attention mask, modality types and M-RoPE positions."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got '{padding_side}'")
    pad_id = int(loaded.tokenizer.pad_token_id)
    image_id = _special_id(loaded, "image_token_id", "<|image_pad|>")
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    mm_types = ((input_ids == image_id) & mask.bool()).to(torch.int32)
    positions, _ = vlm_core(loaded.model).get_rope_index(
        input_ids, mm_token_type_ids=mm_types, image_grid_thw=image_grid_thw, attention_mask=mask
    )
    return VLMInputs(input_ids, mask, positions.long(), mm_types, pixel_values, image_grid_thw)


def encode_prompts(
    loaded: LoadedVLM, requests: Sequence[GenerationRequest], padding_side: Padding = "left"
) -> VLMInputs:
    """Model inputs for generation: chat-templated prompts, images expanded, left-padded."""
    if not requests:
        raise ValueError("encode_prompts needs at least one request")
    rows, pixel_values, grid = _prompt_ids(loaded, requests)
    return pad_batch(loaded, rows, pixel_values, grid, padding_side)


def encode_prompt_completions(
    loaded: LoadedVLM, requests: Sequence[GenerationRequest], completion_token_ids: Sequence[Sequence[int]],
    padding_side: Padding = "right",
) -> tuple[VLMInputs, torch.Tensor]:
    """Model inputs for teacher forcing prompt + completion, and the (B, L) bool mask of completion
    tokens (the tokens whose log-probs are scored: logits at position t-1 predict token t)."""
    if len(requests) != len(completion_token_ids):
        raise ValueError(f"{len(requests)} requests but {len(completion_token_ids)} completions")
    prompts, pixel_values, grid = _prompt_ids(loaded, requests)
    rows = [list(p) + [int(t) for t in c] for p, c in zip(prompts, completion_token_ids)]
    inputs = pad_batch(loaded, rows, pixel_values, grid, padding_side)
    completion_mask = torch.zeros_like(inputs.attention_mask, dtype=torch.bool)
    length = inputs.input_ids.shape[1]
    for i, (p, c) in enumerate(zip(prompts, completion_token_ids)):
        end = length if padding_side == "left" else len(p) + len(c)
        completion_mask[i, end - len(c):end] = True
    return inputs, completion_mask


@dataclass(frozen=True)
class PromptCompletions:
    """A teacher-forcing batch with each distinct prompt once: row b is prompt `row_of[b]` followed by
    completion b. The prompts are left-padded (every one ends at the last prompt position), the
    completions right-padded after them; scoring prefills the prompts once and runs the completions
    through copies of their KV cache (`models/logprobs.shared_prompt_logprobs`)."""

    prompts: VLMInputs  # (U, Lp): the distinct prompts, left-padded
    row_of: torch.Tensor  # (B,) long: the prompt of each row
    completion_ids: torch.Tensor  # (B, T) long: the completion tokens, right-padded with the pad id
    completion_mask: torch.Tensor  # (B, T) bool: True on the completion tokens

    def to(self, device: torch.device) -> PromptCompletions:
        """A copy with every tensor on `device` (no-op on the CPU)."""
        if device.type == "cpu":
            return self
        return PromptCompletions(self.prompts.to(device), self.row_of.to(device), self.completion_ids.to(device),
                                 self.completion_mask.to(device))


def encode_shared_prompt_completions(
    loaded: LoadedVLM, requests: Sequence[GenerationRequest], completion_token_ids: Sequence[Sequence[int]]
) -> PromptCompletions:
    """`PromptCompletions` for rows of (request, completion): one prompt per distinct request object
    (a GRPO group's completions share one), exactly the prompt `encode_prompts` gives the engine."""
    if len(requests) != len(completion_token_ids):
        raise ValueError(f"{len(requests)} requests but {len(completion_token_ids)} completions")
    if not requests or min(len(c) for c in completion_token_ids) < 1:
        raise ValueError("every row needs at least one completion token to score")
    distinct, row_of = distinct_requests(requests)
    prompts = encode_prompts(loaded, distinct, padding_side="left")
    width = max(len(c) for c in completion_token_ids)
    ids = torch.full((len(requests), width), int(loaded.tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.bool)
    for i, completion in enumerate(completion_token_ids):
        ids[i, : len(completion)] = torch.tensor([int(t) for t in completion], dtype=torch.long)
        mask[i, : len(completion)] = True
    return PromptCompletions(prompts, torch.tensor(row_of, dtype=torch.long), ids, mask)


def completion_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token log-probs of the completion tokens under softmax(logits / temperature), shape (B, L).

    Entry [b, t] is log p(input_ids[b, t] | tokens < t) where completion_mask[b, t], else 0. This is
    the reference definition the engine's behaviour log-probs are checked against (temperature <= 0,
    greedy, is scored at temperature 1, as the engine does).
    """
    scale = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits[:, :-1].float() / scale, dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=picked.dtype, device=picked.device)
    out[:, 1:] = picked
    return out * completion_mask.to(out.dtype)
