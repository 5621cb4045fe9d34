"""The contamination guard: no generated sample may leak the held-out test set into training.

MedGR² does not audit this; MedVLSynther does. A candidate is rejected when
  - its image IS a held-out image (same image id: ids are content hashes)      -> "heldout_image";
  - its image is a near-duplicate of a held-out image: the Hamming distance of their perceptual hashes
    is at most `phash_max_distance` (a re-encoded, resized or slightly noised copy of a test image;
    a crop of a held-out study that reached the training side under another id)  -> "heldout_near_duplicate";
  - its normalised question repeats a held-out test question, exactly (after `normalize_text`) or
    above `test_question_similarity` (difflib ratio)                           -> "test_question".

The perceptual hash is the DCT pHash (Zauner 2010; `imagehash.phash`'s layout), written in numpy:
luma, area-resampled to 32x32, 2-D orthonormal DCT-II, the 8x8 lowest frequencies, one bit per
coefficient above their median: 64 bits. Area resampling (exact box averaging) rather than a
Lanczos kernel: it needs no image library, and resizing a copy changes the 32x32 thumbnail least.

Generic questions are not leaks. A question asked of several distinct held-out images ("What imaging
modality was used to capture this image?") is a template whose text says nothing about any one test
item's answer, and the training seeds ask it too; a guard that refused it would refuse every
modality question G writes. So a test question asked of at least `test_question_generic_images`
distinct held-out images is skipped (0: check every test question). Image checks still apply to them.

Each candidate image is hashed once (cached by image id); each distinct candidate question is
compared once (cached by its normalised text). Pure numpy and difflib: no Ray, no models.
"""

from __future__ import annotations

import bisect
import difflib
import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from medgr2_ray.algo.rewards import normalize_text
from medgr2_ray.config import SelectionConfig
from medgr2_ray.data.images import ImageLookup
from medgr2_ray.types import Sample

GUARD_REASONS = ("heldout_image", "heldout_near_duplicate", "test_question")
HASH_SIDE = 32  # the thumbnail the DCT runs on
LOW_FREQ = 8  # the 8x8 lowest frequencies give the 64 bits


@dataclass(frozen=True)
class GuardHit:
    """Why a candidate leaks the test set: `reason` is one of GUARD_REASONS, `detail` names what it matched."""

    reason: str
    detail: str


@functools.lru_cache(maxsize=256)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: output cell i averages input span [i*n_in/n_out, (i+1)*n_in/n_out)."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo = np.arange(n_in, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], lo[None, :] + 1.0) - np.maximum(edges[:-1, None], lo[None, :])
    overlap = np.clip(overlap, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: dct(x) = C @ x."""
    k = np.arange(n, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2.0 * i + 1.0) * k / (2.0 * n))
    c[0, :] = np.sqrt(1.0 / n)
    return c


def phash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an HxW (grey) or HxWx3/4 (RGB[A]) image, as an int (bit 0 = (0, 0))."""
    image = np.asarray(pixels, dtype=np.float64)
    if image.ndim == 3:
        image = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114  # ITU-R 601 luma
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"phash: expected an HxW or HxWxC image, got shape {np.shape(pixels)}")
    small = _area_matrix(image.shape[0], HASH_SIDE) @ image @ _area_matrix(image.shape[1], HASH_SIDE).T
    dct = _dct_matrix(HASH_SIDE)
    # Rounded so that coefficients that are exactly 0 in theory (flat or synthetic images) do not carry
    # float noise of either sign, which would make their bits depend on the BLAS; real ones are >> 1e-6.
    low = np.round((dct @ small @ dct.T)[:LOW_FREQ, :LOW_FREQ].ravel(), 6)
    bits = low > np.median(low)
    return sum(1 << int(i) for i in np.flatnonzero(bits))


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


class ContaminationGuard:
    """Rejects candidates that leak the held-out test set (see the module docstring)."""

    def __init__(self, heldout_images: Mapping[str, np.ndarray], test_questions: Iterable[Sample],
                 cfg: SelectionConfig) -> None:
        self.max_distance = cfg.phash_max_distance
        self.similarity = cfg.test_question_similarity
        # Sorted by id so that the first match named in a detail never depends on input order.
        self._heldout = sorted((image_id, phash(pixels)) for image_id, pixels in heldout_images.items())
        self._heldout_ids = {image_id for image_id, _ in self._heldout}
        self._hashes: dict[str, int] = {}  # candidate image id -> pHash (each image hashed once)
        self._image_hits: dict[str, GuardHit | None] = {}
        self._question_hits: dict[str, GuardHit | None] = {}
        images_by_question: dict[str, set[str]] = defaultdict(set)
        for sample in test_questions:
            images_by_question[normalize_text(sample.question)].add(sample.image_id)
        generic = cfg.test_question_generic_images
        self.generic_questions = sorted(q for q, ids in images_by_question.items() if generic and len(ids) >= generic)
        specific = [q for q in images_by_question if q not in set(self.generic_questions) and q]
        self._exact = set(specific)
        self._by_length = sorted((len(q), q) for q in specific)  # length-banded search for near-exact repeats

    @classmethod
    def from_lookup(cls, heldout_image_ids: Iterable[str], lookup: ImageLookup, test_questions: Iterable[Sample],
                    cfg: SelectionConfig) -> ContaminationGuard:
        """A guard over held-out images given by id, their pixels read through `lookup`."""
        return cls({image_id: lookup(image_id) for image_id in heldout_image_ids}, test_questions, cfg)

    @property
    def num_heldout_images(self) -> int:
        return len(self._heldout)

    @property
    def num_test_questions(self) -> int:
        """Test questions checked (generic ones excluded)."""
        return len(self._exact)

    def check(self, sample: Sample, lookup: ImageLookup | None) -> GuardHit | None:
        """The first leak this candidate shows (image before question), or None when it is clean.
        `lookup` gives pixels for images not hashed yet; None works only for images seen before."""
        hit = self.check_image(sample.image_id, lookup)
        return hit if hit is not None else self.check_question(sample.question)

    def check_image(self, image_id: str, lookup: ImageLookup | None) -> GuardHit | None:
        """Is this image held out, or a near-duplicate of a held-out image? (cached by id)"""
        if image_id in self._image_hits:
            return self._image_hits[image_id]
        if image_id in self._heldout_ids:
            hit: GuardHit | None = GuardHit("heldout_image", f"image {image_id} is a held-out image")
        else:
            distance, nearest = self.nearest_heldout(image_id, lookup)
            hit = None
            if distance <= self.max_distance:
                hit = GuardHit("heldout_near_duplicate", f"pHash distance {distance} <= {self.max_distance} "
                                                          f"to held-out image {nearest}")
        self._image_hits[image_id] = hit
        return hit

    def nearest_heldout(self, image_id: str, lookup: ImageLookup | None) -> tuple[int, str | None]:
        """(pHash distance, id) of the held-out image nearest to this one; (65, None) when none is held out."""
        h = self.image_hash(image_id, lookup)
        return min(((hamming(h, other), other_id) for other_id, other in self._heldout), default=(65, None))

    def image_hash(self, image_id: str, lookup: ImageLookup | None) -> int:
        """The pHash of a candidate image, computed once per id."""
        if image_id not in self._hashes:
            if lookup is None:
                raise ValueError(f"contamination guard: image '{image_id}' has not been hashed yet and no image "
                                 "lookup was given; pass `lookup` (an ImageCache over the run's pool)")
            self._hashes[image_id] = phash(lookup(image_id))
        return self._hashes[image_id]

    def check_question(self, question: str) -> GuardHit | None:
        """Does this question repeat a (non-generic) test question, exactly or near-exactly? (cached)"""
        text = normalize_text(question)
        if text not in self._question_hits:
            self._question_hits[text] = self._match_question(text)
        return self._question_hits[text]

    def _match_question(self, text: str) -> GuardHit | None:
        if text in self._exact:
            return GuardHit("test_question", f"question repeats test question '{text[:80]}'")
        if not text or self.similarity >= 1.0:
            return None
        # ratio = 2M / (la + lb) <= 2 min(la, lb) / (la + lb): only lengths in this band can reach the threshold.
        n, s = len(text), self.similarity
        lo = bisect.bisect_left(self._by_length, (int(np.floor(n * s / (2.0 - s))), ""))
        hi = bisect.bisect_right(self._by_length, (int(np.ceil(n * (2.0 - s) / s)) + 1, ""))
        matcher = difflib.SequenceMatcher(None, b=text)
        for _, other in self._by_length[lo:hi]:
            matcher.set_seq1(other)
            if matcher.real_quick_ratio() >= s and matcher.quick_ratio() >= s and matcher.ratio() >= s:
                return GuardHit("test_question", f"question {matcher.ratio():.3f} similar to test question "
                                                 f"'{other[:80]}'")
        return None



def build_guard(cfg: SelectionConfig, heldout_image_ids: Iterable[str], lookup: ImageLookup,
                test_questions: Iterable[Sample]) -> ContaminationGuard | None:
    """The run's guard over its held-out images and test questions, or None when `selection.guard` is off."""
    if not cfg.guard:
        return None
    return ContaminationGuard.from_lookup(heldout_image_ids, lookup, test_questions, cfg)
