"""An offline byte-level BPE tokenizer for the tiny models, trained in seconds on medical text we ship.

The corpus is text already installed with our dependencies, so no download is ever needed:
ICD-10-CM descriptions (`simple-icd-10-cm`), DICOM/SNOMED concept names (`pydicom.sr.codedict`),
our modality / task / anatomy vocabulary and the prompt protocol of `medgr2_ray.prompts`. The
tokenizer is byte-level (every UTF-8 byte is in the base alphabet), so any text, "µ" and "°"
included, round-trips exactly. It carries the Qwen2-VL special tokens and a Qwen-style chat
template, so code written for a real Qwen2.5-VL tokenizer runs unchanged on it.

Simplification: the GPT-2 pre-tokenizer regex instead of Qwen's, and no NFC normaliser (keeps the
round trip byte-exact). Training is deterministic: a fixed, sorted corpus and a single-threaded trainer.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

from transformers import PreTrainedTokenizerFast

# The Qwen2-VL special tokens, in Qwen's order. They get the first ids of the vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL's chat template (structured content with images, or plain strings), with its default
# system message when none is given.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ANATOMY = (
    "head", "brain", "skull", "neck", "chest", "lung", "heart", "abdomen", "liver", "kidney", "spleen",
    "pancreas", "pelvis", "spine", "knee", "hip", "shoulder", "hand", "foot", "breast", "eye", "retina",
    "skin", "colon", "stomach", "prostate", "bladder", "bone", "vessel", "tissue", "cell", "nucleus",
)

_MEDICAL_EXTRA = (
    "Dose 5 µg/kg at 37 °C; lesion 12 mm × 8 mm; HU −1000 to +3000; T1-weighted; T2 FLAIR; SUVmax 4.2.",
    "Which imaging modality was used to acquire this image? Answer with the option text.",
    "What is the most likely diagnosis? Which organ is shown? Is there an abnormality?",
    "axial sagittal coronal slice window level contrast enhanced non-contrast lesion mass nodule",
)


def _prompt_lines() -> Iterator[str]:
    """Our own vocabulary: modalities, tasks, strategies and the generator prompt protocol."""
    from medgr2_ray.prompts import generator_prompt
    from medgr2_ray.types import Modality, PromptStrategy, TaskType

    for modality in Modality:
        for task in TaskType:
            for strategy in PromptStrategy:
                for anatomy in _ANATOMY[:4]:
                    yield generator_prompt(modality, anatomy, task, strategy)
    yield " ".join(_ANATOMY)
    yield from _MEDICAL_EXTRA


def medical_corpus() -> list[str]:
    """The training text, in a fixed order (so training is deterministic)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm as icd
    from pydicom.sr.codedict import codes

    with warnings.catch_warnings():  # simple-icd-10-cm uses deprecated importlib.resources calls
        warnings.simplefilter("ignore", DeprecationWarning)
        lines = [icd.get_description(code) for code in icd.get_all_codes(with_dots=True)]
    for scheme in ("SCT", "DCM"):
        lines.extend(code.meaning for _, code in sorted(getattr(codes, scheme).concepts.items()))
    lines.extend(_prompt_lines())
    return lines


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer (a few seconds) and wrap it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs >= 270 entries")
    # The Rust trainer parallelises merges; one thread keeps the merge order (and the ids) deterministic.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(medical_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
