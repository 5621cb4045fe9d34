"""The contamination guard: the DCT pHash by hand and against scipy, held-out images caught through
re-encoding, resizing and noise on real medical images, different real images let through, test
questions caught through case and punctuation, generic template questions not treated as leaks."""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
import pytest
import scipy.fft
from PIL import Image

from medgr2_ray.algo.contamination import ContaminationGuard, build_guard, hamming, phash
from medgr2_ray.config import SelectionConfig
from medgr2_ray.types import Modality, Sample, TaskType


def _q(question: str, image: str = "t1", sid: str = "q") -> Sample:
    return Sample(sample_id=sid, image_id=image, image_path=f"{image}.png", question=question, options=("a", "b"),
                  answer="a", task_type=TaskType.DIAGNOSIS, modality=Modality.CT)


@cache
def _real(name: str) -> np.ndarray:
    """A real image as RGB uint8: DICOM files through our ingestion, scikit-image files as they ship."""
    if name.endswith(".dcm"):
        from pydicom.data import get_testdata_file

        from medgr2_ray.data.decoders import IngestOptions
        from medgr2_ray.data.ingest import decode_bytes

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = get_testdata_file(name)
        assert path, f"{name} is not installed (pydicom-data missing?)"
        with open(path, "rb") as f:
            return decode_bytes(f.read(), name, IngestOptions(salt=b"test-contamination-salt-0123456789"))[0].rgb
    import skimage.data

    return np.asarray(Image.open(f"{skimage.data.data_dir}/{name}").convert("RGB"))


def _disguise(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """What a leak looks like after passing through other hands: resized to 60%, noised, JPEG at q=75."""
    h, w = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((int(w * 0.6), int(h * 0.6)), Image.BILINEAR), dtype=np.float64)
    noisy = np.clip(small + np.random.default_rng(seed).normal(0.0, 3.0, small.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


HELDOUT = ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm")  # abdominal CT, head MR, chest film
OTHERS = ("RG3_UNCR.dcm", "US1_UNCR.dcm", "retina.jpg", "ihc.png", "cell.png")  # leg film, US, fundus, IHC, cells


# ---------------------------------------------------------------------------------------------- pHash
def test_phash_of_a_flat_image_sets_only_the_dc_bit() -> None:
    # Every AC coefficient of a constant image is 0 = the median; only DC (bit 0) is above it.
    assert phash(np.full((40, 50, 3), 77, np.uint8)) == 1


def test_phash_of_one_horizontal_cosine_sets_dc_and_that_frequency() -> None:
    # 128 + 100 cos(pi (2j+1) / 64) along the columns is the DCT basis (row 0, column 1) plus DC:
    # coefficients (0,0) and (0,1) are positive, all others 0 -> bits 0 and 1.
    j = np.arange(32)
    image = np.tile(128.0 + 100.0 * np.cos(np.pi * (2 * j + 1) / 64.0), (32, 1))
    assert phash(image) == 0b11
    assert phash(-image + 256.0) == 0b01  # the cosine negated: (0,1) is now negative, below the median 0


def test_phash_area_resampling_ignores_an_exact_integer_upscale() -> None:
    base = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
    assert phash(np.kron(base, np.ones((3, 3), np.uint8))) == phash(base)


def test_phash_bits_match_an_independent_dct() -> None:
    grey = np.random.default_rng(1).uniform(0, 255, (32, 32))
    low = scipy.fft.dctn(grey, norm="ortho")[:8, :8].ravel()
    expected = sum(1 << int(i) for i in np.flatnonzero(low > np.median(low)))
    assert phash(grey) == expected
    rgb = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    low = scipy.fft.dctn(luma, norm="ortho")[:8, :8].ravel()
    assert phash(rgb) == sum(1 << int(i) for i in np.flatnonzero(low > np.median(low)))


def test_phash_refuses_a_non_image() -> None:
    with pytest.raises(ValueError, match="HxW"):
        phash(np.zeros(5))


def test_hamming() -> None:
    assert hamming(0b1011, 0b0001) == 2 and hamming(1 << 63, 0) == 1 and hamming(7, 7) == 0


# ---------------------------------------------------------------------------------------------- images
def _guard(**cfg: object) -> ContaminationGuard:
    return ContaminationGuard({f"held-{n}": _real(n) for n in HELDOUT}, [], SelectionConfig(**cfg))


def test_a_heldout_image_by_id_is_caught() -> None:
    hit = _guard().check(_q("Is there a lesion?", image="held-CT_small.dcm"), lookup=None)
    assert hit is not None and hit.reason == "heldout_image" and "held-CT_small.dcm" in hit.detail


@pytest.mark.parametrize("name", HELDOUT)
def test_a_disguised_heldout_image_is_caught(name: str) -> None:
    leak = _disguise(_real(name))
    assert leak.shape != _real(name).shape  # really resized, and JPEG-coded, and noised
    hit = _guard().check(_q("Is there a lesion?", image="copy"), lookup={"copy": leak}.__getitem__)
    assert hit is not None and hit.reason == "heldout_near_duplicate" and f"held-{name}" in hit.detail


@pytest.mark.parametrize("name", OTHERS)
def test_a_different_real_image_is_not_caught(name: str) -> None:
    guard = _guard()
    assert guard.check(_q("Is there a lesion?", image=name), lookup={name: _real(name)}.__getitem__) is None
    distance, _ = guard.nearest_heldout(name, None)  # hashed once already: no lookup needed any more
    assert distance > guard.max_distance


def test_the_threshold_is_the_config_field() -> None:
    leak = _disguise(_real("MR_small.dcm"))
    distance, nearest = _guard().nearest_heldout("copy", {"copy": leak}.__getitem__)
    assert nearest == "held-MR_small.dcm"
    tight = _guard(phash_max_distance=distance - 1) if distance > 0 else None
    if tight is not None:
        assert tight.check(_q("q", image="copy"), {"copy": leak}.__getitem__) is None
    assert _guard(phash_max_distance=distance).check(_q("q", image="copy"), {"copy": leak}.__getitem__) is not None


def test_each_image_is_hashed_once_and_a_missing_lookup_is_named() -> None:
    guard = _guard()
    reads: list[str] = []

    def lookup(image_id: str) -> np.ndarray:
        reads.append(image_id)
        return _real("retina.jpg")

    for k in range(3):
        assert guard.check(_q(f"Question {k}?", image="fundus"), lookup) is None
    assert reads == ["fundus"]
    with pytest.raises(ValueError, match="'never-seen'.*pass `lookup`"):
        guard.check(_q("q", image="never-seen"), None)


# ---------------------------------------------------------------------------------------------- questions
TEST_QUESTION = "Which lobe of the left lung holds the 3 cm spiculated nodule?"


def _qguard(*questions: Sample, **cfg: object) -> ContaminationGuard:
    return ContaminationGuard({}, questions, SelectionConfig(**cfg))


def test_a_test_question_with_changed_case_and_punctuation_is_caught() -> None:
    guard = _qguard(_q(TEST_QUESTION))
    hit = guard.check_question("WHICH lobe of the left lung holds the 3 cm spiculated nodule ???")
    assert hit is not None and hit.reason == "test_question" and "repeats" in hit.detail
    # "3-cm" normalises to "3cm": not exact any more, but 0.99 similar
    near = guard.check_question("Which lobe of the left lung holds the 3-cm, spiculated nodule?")
    assert near is not None and near.reason == "test_question" and "similar" in near.detail


def test_other_questions_pass_and_the_similarity_threshold_is_the_config_field() -> None:
    guard = _qguard(_q(TEST_QUESTION))
    assert guard.check_question("Which lobe of the right lung holds the calcified granuloma?") is None
    assert guard.check_question("") is None
    exact_only = _qguard(_q(TEST_QUESTION), test_question_similarity=1.0)
    assert exact_only.check_question("Which lobe of the left lung holds the 3-cm spiculated nodule?") is None
    assert exact_only.check_question(TEST_QUESTION.upper()) is not None


def test_a_generic_template_question_is_not_a_leak() -> None:
    stem = "What imaging modality was used to capture this image?"
    generic = [_q(stem, image="t1", sid="a"), _q(stem, image="t2", sid="b")]
    guard = _qguard(*generic, _q(TEST_QUESTION, image="t3"))
    assert guard.generic_questions == ["what imaging modality was used to capture this image"]
    assert guard.num_test_questions == 1
    assert guard.check_question(stem) is None and guard.check_question(TEST_QUESTION) is not None
    # asked of one image only, or with the generic rule off, the same text is checked
    assert _qguard(generic[0]).check_question(stem) is not None
    assert _qguard(*generic, test_question_generic_images=0).check_question(stem) is not None
    assert _qguard(*generic, test_question_generic_images=3).check_question(stem) is not None


def test_the_image_is_checked_before_the_question_and_the_guard_can_be_off() -> None:
    cfg = SelectionConfig()
    lookup = {"held": _real("CT_small.dcm")}.__getitem__
    guard = build_guard(cfg, ["held"], lookup, [_q(TEST_QUESTION)])
    assert guard is not None and guard.num_heldout_images == 1
    hit = guard.check(_q(TEST_QUESTION, image="held"), lookup)
    assert hit is not None and hit.reason == "heldout_image"
    assert build_guard(SelectionConfig(guard=False), ["held"], lookup, [_q(TEST_QUESTION)]) is None
