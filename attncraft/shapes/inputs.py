"""Images and videos from files, brought to the size the reader works at, with bounded cost.

The reader (:mod:`attncraft.shapes.reader`) reads the world's scenes, rendered at 64-128 px (up to a
few hundred). Its template matching costs grow with the pixel count (a 1024x1024 image takes
seconds, a 4000x4000 one about a minute and 5 GB), while nothing it decides (colour, shape, position,
size, pattern) needs more than a few hundred pixels. So every file that is scored is brought down to
at most :data:`READER_MAX_SIDE` on its longer side up front, with an area (box) filter that keeps
colours and coverage; the caller is told when that happens. Files beyond
:data:`MAX_INPUT_PIXELS` are refused before they are decoded (a decompression bomb would take the
memory first), videos longer than :data:`MAX_VIDEO_FRAMES` likewise.

Measured on the world's own renders: a 128 px scene upscaled to 4000x4000 and brought back to 256 px
is read exactly like the original (every attribute right).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attncraft.errors import InputError

READER_MAX_SIDE = 256
"""Longest side the reader is given; larger inputs are downscaled (twice the largest trained size)."""
MAX_INPUT_PIXELS = 100_000_000
"""Largest image (or video frame) accepted at all, in pixels (10000 x 10000)."""
MAX_VIDEO_FRAMES = 512
"""Longest video accepted, in frames (the world's videos have 2-64)."""
MIN_SIDE = 16


@dataclass
class ReaderInput:
    """What was loaded: ``data`` (a PIL image, or (F, H, W, 3) uint8 frames) and its original size."""

    data: Any
    original_size: tuple[int, int]
    size: tuple[int, int]

    @property
    def downscaled(self) -> bool:
        return self.size != self.original_size

    def note(self, path: str | os.PathLike) -> str | None:
        """The line telling the user the input was downscaled, or None."""
        if not self.downscaled:
            return None
        (w, h), (w2, h2) = self.original_size, self.size
        return (f"note: {Path(path).name} is {w}x{h} pixels; scoring it downscaled to {w2}x{h2} "
                f"(the reader works at up to {READER_MAX_SIDE} px)")


def fitted_size(width: int, height: int, max_side: int = READER_MAX_SIDE) -> tuple[int, int]:
    """``(width, height)`` scaled so that the longer side is at most ``max_side`` (aspect kept)."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise InputError(
            f"{path} is {width}x{height} pixels, more than the {MAX_INPUT_PIXELS // 1_000_000} megapixels that are read",
            f"downscale it first (the reader works at up to {READER_MAX_SIDE} px)",
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{path} is {width}x{height} pixels", f"score images of at least {MIN_SIDE}x{MIN_SIDE} pixels")


def load_image_for_reader(path: str | os.PathLike, max_side: int = READER_MAX_SIDE) -> ReaderInput:
    """An RGB PIL image of at most ``max_side`` px on its longer side (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        # PIL's own bomb check is replaced by MAX_INPUT_PIXELS, checked on the header (with the size)
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                original = im.size
                _check_pixels(path, *original)
                target = fitted_size(*original, max_side)
                if target != original:
                    im.draft("RGB", target)  # JPEG: decode at a reduced scale directly
                image = im.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(f"{path} is not a readable image", "pass a PNG/JPEG image or a GIF/MP4 video") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if image.size != target:
        image = image.resize(target, Image.Resampling.BOX)
    return ReaderInput(image, original, image.size)


def load_video_for_reader(path: str | os.PathLike, max_side: int = READER_MAX_SIDE) -> ReaderInput:
    """(F, H, W, 3) uint8 frames of at most ``max_side`` px, downscaled while they are decoded."""
    from attncraft.video.io import probe_video, read_video

    path = Path(path)
    original = probe_video(path)
    _check_pixels(path, *original)
    frames = read_video(path, max_side=max_side, max_frames=MAX_VIDEO_FRAMES)
    return ReaderInput(np.ascontiguousarray(frames), original, (int(frames.shape[2]), int(frames.shape[1])))
