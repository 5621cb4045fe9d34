"""answer_agreement: the independent faithfulness check of generated data (rounds' `kept_answer_correct`,
the selection benchmark's faithful shares) counts only modality questions about known images."""

from __future__ import annotations

from medgr2_ray.eval.protocols import answer_agreement
from medgr2_ray.types import MedImage, Modality, Sample, TaskType


def _image(i: str, modality: Modality) -> MedImage:
    return MedImage(i, f"{i}.png", modality, "head", "test", "CC0", f"st-{i}", 8, 8)


def _sample(i: str, image_id: str, answer: str, task: TaskType = TaskType.MODALITY) -> Sample:
    return Sample(i, image_id, "", "Which modality?", ("Computed Tomography (CT)", "Magnetic Resonance Imaging (MRI)"),
                  answer, task, Modality.CT)


def test_counts_modality_questions_about_known_images_only() -> None:
    images = {"ct": _image("ct", Modality.CT), "mr": _image("mr", Modality.MR)}
    samples = [_sample("a", "ct", "Computed Tomography (CT)"),       # right
               _sample("b", "mr", "Computed Tomography (CT)"),       # wrong: the image is MR
               _sample("c", "mr", "Magnetic Resonance Imaging (MRI)"),  # right
               _sample("d", "ct", "liver", TaskType.ANATOMY),          # not a modality question: not counted
               _sample("e", "unknown", "Computed Tomography (CT)")]  # image not known: not counted
    assert answer_agreement(samples, images) == 2 / 3
    assert answer_agreement(samples[3:], images) is None
