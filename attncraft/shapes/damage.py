"""Mild image damage, to check that the reader judges content, not pixel-perfect rendering.

Edited, customized and video outputs are often a little soft, recompressed or resampled; a referee
that fails them for that measures the wrong thing. These are the damages the reader is tested and
benchmarked under (``tests/shapes/test_reader_damage.py``, ``benchmarks/bench_reader_damage.py``), all
with PIL as a user would apply them:

* ``blur1`` - ``ImageFilter.GaussianBlur(1)`` (standard deviation 1 px);
* ``jpeg75`` / ``jpeg50`` - JPEG at quality 75 / 50, PIL's defaults otherwise (4:2:0 chroma
  subsampling, so colour is stored at half resolution);
* ``resize`` / ``resize-bilinear`` - down to 3/4 of the side and back (64 -> 48 -> 64), bicubic (PIL's
  default) / bilinear both ways;

and ``clean`` (the image itself, through the same uint8 round trip).

Every function takes and returns an (H, W, 3) uint8 array (:func:`to_uint8` converts the reader's
inputs).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["DAMAGES", "to_uint8", "gaussian_blur", "jpeg", "resize_roundtrip", "damage"]


def to_uint8(image: Any) -> np.ndarray:
    """Any image the reader accepts -> (H, W, 3) uint8."""
    from attncraft.shapes.reader import to_numpy_image

    return (to_numpy_image(image) * 255.0).round().astype(np.uint8)


def gaussian_blur(image: np.ndarray, radius: float = 1.0) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def resize_roundtrip(image: np.ndarray, factor: float = 0.75, resample: int = Image.BICUBIC) -> np.ndarray:
    h, w = image.shape[:2]
    small = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return np.asarray(Image.fromarray(image).resize(small, resample).resize((w, h), resample))


DAMAGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda a: a,
    "blur1": lambda a: gaussian_blur(a, 1.0),
    "jpeg75": lambda a: jpeg(a, 75),
    "jpeg50": lambda a: jpeg(a, 50),
    "resize": lambda a: resize_roundtrip(a, 0.75, Image.BICUBIC),
    "resize-bilinear": lambda a: resize_roundtrip(a, 0.75, Image.BILINEAR),
}
"""The named damages, uint8 (H, W, 3) in and out."""


def damage(image: Any, name: str) -> np.ndarray:
    """Apply the damage ``name`` (a key of :data:`DAMAGES`) to any image the reader accepts."""
    if name not in DAMAGES:
        raise ValueError(f"unknown damage {name!r}; expected one of {', '.join(DAMAGES)}")
    return DAMAGES[name](to_uint8(image))
