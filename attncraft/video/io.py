"""Writing and reading short videos (generated clips, world renders, mesh turntables).

One writer for the whole project so every video is written the same way: atomically (temporary
name, then rename), as MP4 (H.264 through imageio-ffmpeg, ``yuv420p`` so every player opens it), GIF
(Pillow, looping) or animated WebP (Pillow, lossless, looping: exact frames in a small file), chosen
by the extension, with an optional JSON sidecar holding the settings that reproduce it. Frames are
``(F, H, W, 3)`` uint8 arrays or float tensors/arrays in ``[0, 1]``, or ``(F, 3, H, W)`` tensors.

:func:`write_video` writes to a path whose name is already chosen (it replaces); a generated result
goes through :func:`write_video_unique`, which takes the first free name (``stem``, ``stem-2``...)
for the video *and* its companions (sidecar, contact sheet) unless ``overwrite``.
:func:`contact_sheet` lays all frames out in one image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attncraft.errors import InputError
from attncraft.outputs import atomic_path, write_sidecar

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")
VIDEO_FORMATS = tuple(s[1:] for s in VIDEO_SUFFIXES)
FRAME_TAG = b"attncraft-video"
"""Metadata (GIF comment, WebP XMP: ``attncraft-video frames=N frame_ms=D``) with the number of frames
and the duration of one: the GIF and WebP encoders merge identical consecutive frames into one longer
frame (a still video into one plain image), and :func:`read_video` splits them again."""
_TAG_RE = re.compile(rb"^attncraft-video frames=(\d+) frame_ms=(\d+)$")
SHEET_SUFFIX = "_frames.png"
"""Name ending of a video's contact sheet (``clip.mp4`` -> ``clip_frames.png``)."""
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


def _check(ext: str, fps: float) -> None:
    if ext not in VIDEO_SUFFIXES:
        raise InputError(f"cannot write a video as {ext or 'a file without extension'}", "use .mp4, .gif or .webp")
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}", "pass e.g. --fps 8")


def _encode(tmp: Path, data: np.ndarray, fps: float, ext: str) -> None:
    """Write uint8 frames to ``tmp`` in the format of ``ext``."""
    if ext == ".mp4":
        import imageio.v2 as imageio

        with imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error") as writer:
            for frame in _pad_to_macro_block(data):
                writer.append_data(frame)
        return
    from PIL import Image

    images = [Image.fromarray(frame) for frame in data]
    duration = max(1, round(1000 / fps))
    if ext == ".gif":
        duration = gif_frame_ms(fps)
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       comment=_frame_tag(len(images), duration))
    else:
        images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       lossless=True, method=4, xmp=_frame_tag(len(images), duration))


def gif_frame_ms(fps: float) -> int:
    """A GIF frame's duration: GIF counts in hundredths of a second, so a multiple of 10 ms."""
    return max(10, 10 * round(100 / fps))


def _frame_tag(frames: int, frame_ms: int) -> bytes:
    return FRAME_TAG + f" frames={frames} frame_ms={frame_ms}".encode()


def _read_animated(path: Path, tag_key: str) -> np.ndarray:
    """GIF/WebP frames; frames the encoder merged (identical to the one before) come back one per
    frame duration named in the file's attncraft tag (``tag_key``: where the format keeps it)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        tag = im.info.get(tag_key)
        match = _TAG_RE.match(tag) if isinstance(tag, bytes) else None
        count, frame_ms = (int(match[1]), int(match[2])) if match else (0, 0)
        out = []
        for frame in ImageSequence.Iterator(im):
            rgb = np.asarray(frame.convert("RGB"))  # loads the frame, and with it its duration
            duration = frame.info.get("duration") or 0
            out.extend([rgb] * (max(1, round(duration / frame_ms)) if frame_ms and duration else 1))
    if count and len(out) == 1:  # everything merged into one still image
        out *= count
    return np.stack(out)


def _frames_for(frames: Any) -> np.ndarray:
    data = frames_to_uint8(frames)
    if len(data) == 0:
        raise InputError("a video needs at least one frame", "generate at least one frame")
    return data


def write_video(
    path: str | os.PathLike,
    frames: Any,
    fps: float = 8.0,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``frames`` to ``path`` (.mp4, .gif or .webp) atomically; with ``settings``, also a sidecar.

    ``path`` is replaced if it exists: use :func:`write_video_unique` for results that must not
    replace anything."""
    path = Path(path)
    ext = path.suffix.lower()
    _check(ext, fps)
    data = _frames_for(frames)
    with atomic_path(path) as tmp:
        _encode(tmp, data, fps, ext)
    if settings is not None:
        write_sidecar(path, settings, frames=len(data), fps=fps, height=int(data.shape[1]), width=int(data.shape[2]))
    return path


def contact_sheet(frames: Any, columns: int | None = None, pad: int = 2, fill: tuple[int, int, int] = (255, 255, 255)):
    """All frames in one PIL image, left to right then top to bottom (``columns`` default: up to 8)."""
    from PIL import Image

    data = _frames_for(frames)
    n, h, w = data.shape[:3]
    cols = max(1, min(columns or 8, n))
    rows = (n + cols - 1) // cols
    sheet = np.empty((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), np.uint8)
    sheet[:] = fill
    for i, frame in enumerate(data):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = frame
    return Image.fromarray(sheet)


def write_video_unique(
    folder: str | os.PathLike,
    stem: str,
    frames: Any,
    fmt: str = "mp4",
    fps: float = 8.0,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    sheet: bool = True,
    **sidecar_extra: Any,
) -> dict[str, Path]:
    """Publish a video under the first free name ``stem.fmt`` / ``stem-2.fmt``... of ``folder``, with
    its sidecar (``<video>.json``: ``settings`` plus frames, fps, size and ``sidecar_extra``) and,
    with ``sheet``, a contact sheet PNG (``<stem>_frames.png``, the settings in its text chunk).

    A name counts as taken when the video or any companion exists; ``overwrite`` replaces instead.
    Returns ``{"video": ..., "sidecar": ..., "sheet": ...}``.
    """
    from attncraft.outputs import save_png_with_settings, to_strict_json, unique_output

    ext = "." + str(fmt).lower().lstrip(".")
    _check(ext, fps)
    data = _frames_for(frames)
    if settings is not None:
        to_strict_json(dict(settings))  # refuse a NaN before anything is written
    companions = (f"{ext}.json",) + ((SHEET_SUFFIX,) if sheet else ())
    with unique_output(folder, stem, ext, overwrite=overwrite, companions=companions) as out:
        _encode(out.tmp, data, fps, ext)
    video = out.path
    paths = {"video": video}
    if settings is not None:
        paths["sidecar"] = write_sidecar(video, settings, frames=len(data), fps=fps, height=int(data.shape[1]),
                                         width=int(data.shape[2]), **sidecar_extra)
    if sheet:
        paths["sheet"] = save_png_with_settings(contact_sheet(data), video.with_name(video.stem + SHEET_SUFFIX),
                                                dict(settings or {}), overwrite=True)
    return paths


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read all frames of an MP4, GIF or animated WebP as ``(F, H, W, 3)`` uint8 (MP4 padding is not
    removed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video {str(path)!r} does not exist", "check the path")
    if path.suffix.lower() in (".gif", ".webp"):
        return _read_animated(path, "comment" if path.suffix.lower() == ".gif" else "xmp")
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    return frames[..., :3]
