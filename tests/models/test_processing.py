"""Prompt encoding: image-token expansion for mixed sizes, M-RoPE positions equal HF's own, padding
that does not change logits, teacher-forcing masks, clear errors for bad images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgr2_ray.models.loading import LoadedVLM
from medgr2_ray.models.processing import (
    completion_logprobs,
    check_request,
    encode_prompt_completions,
    encode_prompts,
    forward_kwargs,
)
from medgr2_ray.types import GenerationRequest


def _requests(ct: np.ndarray) -> list[GenerationRequest]:
    wide = np.ascontiguousarray(np.concatenate([ct, ct[:, ::-1]], axis=1))  # 128 x 256
    small = ct[::4, ::4].copy()  # 32 x 32
    return [
        GenerationRequest("ct", "Which organ is shown?", (ct,)),
        GenerationRequest("text", "Name a CT window for lung.", system="Answer briefly."),
        GenerationRequest("two", "Compare the two images.", (wide, small)),
    ]


def test_image_tokens_match_grids_for_mixed_sizes(loaded: LoadedVLM, ct_image: np.ndarray) -> None:
    inputs = encode_prompts(loaded, _requests(ct_image))
    grid = inputs.image_grid_thw
    assert grid is not None and inputs.pixel_values is not None
    assert grid.shape == (3, 3) and len({tuple(g) for g in grid.tolist()}) == 3  # three different sizes
    merge = loaded.image_processor.merge_size
    per_row = inputs.mm_token_type_ids.sum(1).tolist()
    sizes = (grid.prod(1) // merge**2).tolist()
    assert per_row == [sizes[0], 0, sizes[1] + sizes[2]]
    assert inputs.pixel_values.shape[0] == int(grid.prod(1).sum())
    assert max(sizes) <= (168 // 28) ** 2  # resized to at most image_size² pixels (168 px: 36 tokens)
    # Left padding: every row ends with the assistant header, padding sits on the left.
    assert inputs.attention_mask[:, -1].all()
    assert "Answer briefly." in loaded.tokenizer.decode(inputs.row_token_ids(1))


def test_positions_equal_hf_internal_mrope(loaded: LoadedVLM, ct_image: np.ndarray) -> None:
    inputs = encode_prompts(loaded, _requests(ct_image))
    mask = inputs.attention_mask.bool()
    with torch.no_grad():
        ours = loaded.model(**forward_kwargs(inputs)).logits
        kwargs = forward_kwargs(inputs)
        del kwargs["position_ids"]  # let HF derive M-RoPE positions from mm_token_type_ids itself
        loaded.model.model.rope_deltas = None
        theirs = loaded.model(**kwargs).logits
    assert torch.equal(ours[mask], theirs[mask])
    # Image tokens really use 3-D positions (height/width rows differ from the temporal row).
    image = inputs.mm_token_type_ids.bool()
    assert not torch.equal(inputs.position_ids[0][image], inputs.position_ids[1][image])


def test_padding_side_and_batching_do_not_change_logits(loaded: LoadedVLM, ct_image: np.ndarray) -> None:
    requests = _requests(ct_image)
    left = encode_prompts(loaded, requests, padding_side="left")
    right = encode_prompts(loaded, requests, padding_side="right")
    with torch.no_grad():
        a = loaded.model(**forward_kwargs(left)).logits[left.attention_mask.bool()]
        b = loaded.model(**forward_kwargs(right)).logits[right.attention_mask.bool()]
        single = encode_prompts(loaded, requests[2:])
        c = loaded.model(**forward_kwargs(single)).logits[0]
    assert (a - b).abs().max() < 1e-4
    assert (b[-c.shape[0]:] - c).abs().max() < 1e-4


def test_a_repeated_request_is_encoded_once_and_equals_separate_copies(
    loaded: LoadedVLM, ct_image: np.ndarray
) -> None:
    # GRPO batches one request object once per completion: it is processed once, and the batch must be
    # exactly what separately built equal requests give (pixels, grids, ids, positions), in row order.
    requests = _requests(ct_image)
    shared = [requests[2], requests[0], requests[2], requests[1], requests[0], requests[2]]
    copies = [GenerationRequest(r.request_id, r.prompt, r.images, system=r.system) for r in shared]
    a, b = encode_prompts(loaded, shared), encode_prompts(loaded, copies)
    for field in ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    inputs, mask = encode_prompt_completions(loaded, shared, [[5, 6]] * 6)
    ref, ref_mask = encode_prompt_completions(loaded, copies, [[5, 6]] * 6)
    assert torch.equal(inputs.input_ids, ref.input_ids) and torch.equal(mask, ref_mask)
    assert torch.equal(inputs.pixel_values, ref.pixel_values)
    calls: list[int] = []
    processor = loaded.image_processor
    original = processor.__class__.__call__
    try:
        processor.__class__.__call__ = lambda self, images, **kw: calls.append(len(images)) or original(self, images=images, **kw)
        encode_prompts(loaded, shared)
    finally:
        processor.__class__.__call__ = original
    assert calls == [3]  # the two images of "two" and the one of "ct", once each


def test_teacher_forcing_mask_and_logprobs(loaded: LoadedVLM, ct_image: np.ndarray) -> None:
    requests = _requests(ct_image)[:2]
    completions = [[5, 6, 7, 8], [9, 10]]
    for side in ("right", "left"):
        inputs, mask = encode_prompt_completions(loaded, requests, completions, padding_side=side)
        assert mask.sum(1).tolist() == [4, 2]
        assert [inputs.input_ids[i][mask[i]].tolist() for i in range(2)] == completions
        with torch.no_grad():
            logits = loaded.model(**forward_kwargs(inputs)).logits
        logp = completion_logprobs(logits, inputs.input_ids, mask, temperature=0.7)
        assert (logp[~mask] == 0).all() and (logp[mask] < 0).all()
        # Independent formula for one token.
        row, col = 0, int(mask[0].nonzero()[0])
        expected = torch.log_softmax(logits[row, col - 1] / 0.7, -1)[inputs.input_ids[row, col]]
        assert torch.isclose(logp[row, col], expected, atol=1e-6)


def test_bad_images_name_the_request(loaded: LoadedVLM, ct_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="request 'f32'.*uint8"):
        encode_prompts(loaded, [GenerationRequest("f32", "x", (ct_image.astype(np.float32),))])
    with pytest.raises(ValueError, match="request 'rgba'.*HxWx3"):
        encode_prompts(loaded, [GenerationRequest("rgba", "x", (np.zeros((8, 8, 4), np.uint8),))])
    with pytest.raises(ValueError, match="request 'pad'.*placeholder"):
        encode_prompts(loaded, [GenerationRequest("pad", "<|image_pad|> here")])
    grey = encode_prompts(loaded, [GenerationRequest("grey", "x", (ct_image[:, :, 0],))])
    rgb = encode_prompts(loaded, [GenerationRequest("rgb", "x", (ct_image,))])
    assert torch.equal(grey.pixel_values, rgb.pixel_values)


def test_check_request_lets_callers_filter_bad_requests(ct_image: np.ndarray) -> None:
    good = GenerationRequest("good", "Which organ?", (ct_image,))
    assert check_request(good) is None
    assert "uint8" in (check_request(GenerationRequest("bad", "x", (ct_image.astype(np.int16),))) or "")
    assert "placeholder" in (check_request(GenerationRequest("sys", "x", system="<|vision_start|>")) or "")
