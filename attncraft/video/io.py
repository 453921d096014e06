"""Writing and reading short videos (generated clips, world renders, mesh turntables).

One writer for the whole project so every video is written the same way: atomically (temporary
name, then rename), as MP4 (H.264 through imageio-ffmpeg, ``yuv420p`` so every player opens it) or
GIF (Pillow, looping), chosen by the extension, with an optional JSON sidecar holding the settings
that reproduce it. Frames are ``(F, H, W, 3)`` uint8 arrays or float tensors/arrays in ``[0, 1]``,
or ``(F, 3, H, W)`` tensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attncraft.errors import InputError
from attncraft.outputs import atomic_path, write_sidecar

VIDEO_SUFFIXES = (".mp4", ".gif")
MACRO_BLOCK = 16
"""H.264 encodes whole 16x16 macro blocks: MP4 frames are padded up to a multiple of it."""


def frames_to_uint8(frames: Any) -> np.ndarray:
    """Normalise frames to a contiguous ``(F, H, W, 3)`` uint8 array."""
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise InputError(f"a video needs frames shaped (F, H, W, 3), got shape {arr.shape}", "pass a stack of RGB frames")
    if arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _pad_to_macro_block(frames: np.ndarray) -> np.ndarray:
    f, h, w, c = frames.shape
    ph, pw = (-h) % MACRO_BLOCK, (-w) % MACRO_BLOCK
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def write_video(
    path: str | os.PathLike,
    frames: Any,
    fps: float = 8.0,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``frames`` to ``path`` (.mp4 or .gif) atomically; with ``settings``, also a sidecar."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_SUFFIXES:
        raise InputError(f"cannot write a video as {ext or 'a file without extension'}", "use .mp4 or .gif")
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}", "pass e.g. --fps 8")
    data = frames_to_uint8(frames)
    if len(data) == 0:
        raise InputError("a video needs at least one frame", "generate at least one frame")
    with atomic_path(path) as tmp:
        if ext == ".mp4":
            import imageio.v2 as imageio

            with imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", quality=8, macro_block_size=1,
                                    ffmpeg_log_level="error") as writer:
                for frame in _pad_to_macro_block(data):
                    writer.append_data(frame)
        else:
            from PIL import Image

            images = [Image.fromarray(frame) for frame in data]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(1, round(1000 / fps)), loop=0)
    if settings is not None:
        write_sidecar(path, settings, frames=len(data), fps=fps, height=int(data.shape[1]), width=int(data.shape[2]))
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read all frames of an MP4 or GIF as ``(F, H, W, 3)`` uint8 (MP4 padding is not removed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video {str(path)!r} does not exist", "check the path")
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    return frames[..., :3]
