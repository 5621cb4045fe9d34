"""The one image-lookup cache: image id -> RGB uint8 pixels, read once per process.

Every process that needs pixels (the driver, a rollout or scorer actor, a learner, an evaluation task)
holds one `ImageCache`. It knows where each image lives (a file path, or an object-store ref the driver
put once) and decodes it on first use; later lookups are a dict hit. Callers pass the cache itself as
`ImageLookup` (it is callable), so code that only needs "pixels for this id" never knows the source.
No Ray import here: a ref source is resolved with the `resolve` callable the caller hands in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medgr2_ray.data.store import read_rgb
from medgr2_ray.types import MedImage, Sample

ImageLookup = Callable[[str], np.ndarray]  # image_id -> HxWx3 uint8


class UnknownImageError(KeyError):
    """An image id that no source in this cache knows."""


class ImageCache:
    """image id -> pixels, decoded once (see the module docstring)."""

    def __init__(self, paths: Mapping[str, str | Path] | None = None, refs: Mapping[str, Any] | None = None,
                 resolve: Callable[[Any], np.ndarray] | None = None) -> None:
        if refs and resolve is None:
            raise ValueError("ImageCache: refs need a `resolve` callable (e.g. ray.get)")
        self._paths = dict(paths or {})
        self._refs = dict(refs or {})
        self._resolve = resolve
        self._pixels: dict[str, np.ndarray] = {}

    @classmethod
    def of_images(cls, images: Iterable[MedImage], root: str | Path | None = None) -> "ImageCache":
        """A cache over pool records (relative paths are taken from `root`)."""
        base = Path(root) if root is not None else None
        return cls({i.image_id: (base / i.path if base is not None and not Path(i.path).is_absolute() else i.path)
                    for i in images})

    @classmethod
    def of_samples(cls, samples: Iterable[Sample]) -> "ImageCache":
        """A cache over the images that samples name (their `image_path`)."""
        return cls({s.image_id: s.image_path for s in samples})

    def add_paths(self, paths: Mapping[str, str | Path]) -> None:
        """Learn more image files (ids already known keep their source)."""
        for image_id, path in paths.items():
            self._paths.setdefault(image_id, path)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._pixels or image_id in self._refs or image_id in self._paths

    def __call__(self, image_id: str) -> np.ndarray:
        found = self._pixels.get(image_id)
        if found is not None:
            return found
        if image_id in self._refs:
            pixels = np.asarray(self._resolve(self._refs[image_id]))  # type: ignore[misc]
        elif image_id in self._paths:
            pixels = read_rgb(self._paths[image_id])
        else:
            raise UnknownImageError(f"image '{image_id}' is in no source of this cache (a sample names an "
                                    "image that is not in the run's pool)")
        self._pixels[image_id] = pixels
        return pixels
