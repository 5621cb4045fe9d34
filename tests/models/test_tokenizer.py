"""The offline tokenizer: byte-exact round trips of medical text, Qwen special tokens, chat template,
deterministic training."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from medgr2_ray.models.tokenizer import SPECIAL_TOKENS, train_tokenizer

MEDICAL_TEXT = [
    "Pneumothorax of the left lung; no pleural effusion.",
    "Dose 5 µg/kg IV at 37 °C, lesion 12 mm × 8 mm, SUVmax 4.2, HU −1000…+3000",
    "Carcinome hépatocellulaire (肝细胞癌), Ödem, ±2σ",
    "  leading spaces,\ttabs\nand newlines\n",
    "Question: Which modality?\nOptions: A. CT | B. MR\nAnswer: A",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):  # the saved tokenizer of the session's tiny model
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("text", MEDICAL_TEXT)
def test_round_trip_is_exact(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_medical_words_are_learned_merges(tokenizer) -> None:
    # A trained BPE compresses its own domain: far fewer tokens than bytes.
    text = "Malignant neoplasm of upper lobe, right bronchus or lung"
    assert len(tokenizer(text)["input_ids"]) < len(text.encode()) / 2.5


def test_special_tokens_are_single_ids(tokenizer) -> None:
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"],
                            skip_special_tokens=True) == "user"


def test_chat_template_places_images_and_generation_prompt(tokenizer) -> None:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which organ?"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Which organ?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_training_is_deterministic(tokenizer) -> None:
    again = train_tokenizer(len(tokenizer))
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_too_small_vocab_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(100)
