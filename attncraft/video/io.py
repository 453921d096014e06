"""Writing and reading short videos (generated clips, world renders, mesh turntables).

One writer for the whole project so every video is written the same way: atomically under a name
that replaces nothing (:func:`attncraft.outputs.unique_output`; ``overwrite=True`` replaces), as
MP4 (H.264 through imageio-ffmpeg's ffmpeg, ``yuv420p`` so every player opens it; ffmpeg's exit
status is checked), GIF (Pillow, looping) or animated WebP (Pillow, lossless, looping: exact frames),
chosen by the extension, with an optional JSON sidecar holding the settings that reproduce it and an
optional contact sheet of all frames (:func:`contact_sheet`, ``<stem>_frames.png``, the settings in
its text chunk). One reader (:func:`read_video`) that reports a file it cannot decode in one line,
and can downscale frames while decoding. Frames are ``(F, H, W, 3)`` uint8 arrays or float
tensors/arrays in ``[0, 1]``, or ``(F, 3, H, W)`` tensors.

The GIF and WebP encoders merge identical consecutive frames into one longer frame (a still video
into one plain image), so the writer tags each GIF/WebP with its frame count and frame duration
(GIF comment / WebP XMP, :data:`FRAME_TAG`) and the reader splits merged frames again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from attncraft.errors import InputError, short_reason
from attncraft.outputs import sidecar_path, unique_output, write_sidecar
from attncraft.validation import check_finite, check_input_file

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")
VIDEO_FORMATS = tuple(s[1:] for s in VIDEO_SUFFIXES)
FRAME_TAG = b"attncraft-video"
"""Start of the tag ``attncraft-video frames=N frame_ms=D`` in a GIF's comment or a WebP's XMP."""
_TAG_RE = re.compile(rb"^attncraft-video frames=(\d+) frame_ms=(\d+)$")
SHEET_SUFFIX = "_frames.png"
"""Name ending of a video's contact sheet (``clip.mp4`` -> ``clip_frames.png``)."""
MACRO_BLOCK = 16
"""H.264 encodes whole 16x16 macro blocks: MP4 frames are padded up to a multiple of it."""
MP4_CRF = 10
"""x264 constant rate factor (0 lossless .. 51 worst); 10 is what imageio's quality 8 gave."""


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


_FFMPEG_BANNER = ("ffmpeg version", "built with", "configuration:", "lib", "Input #", "Output #", "Stream #",
                  "Duration:", "Metadata:", "encoder", "major_brand", "minor_version", "compatible_brands")


def _ffmpeg_reason(text: str) -> str:
    """The line of an ffmpeg log that says what went wrong (not its version banner)."""
    if "=== stderr ===" in text:  # imageio-ffmpeg: "Could not load meta information\n=== stderr ===\n<log>"
        text = text.split("=== stderr ===", 1)[1]
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(_FFMPEG_BANNER) or line.startswith("==="):
            continue
        line = re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line)  # "[in#0 @ 0x55..] moov atom not found"
        lines.append(line)
    specific = [line for line in lines if not line.lower().startswith(("error opening", "error while", "conversion failed"))]
    return short_reason((specific or lines or ["ffmpeg failed"])[0], 120)


def _encode_mp4(target: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 ``yuv420p`` through the ffmpeg binary imageio-ffmpeg ships; fails loudly.

    imageio's writer ignores ffmpeg's exit status, so a full disk gave a truncated MP4 under the
    final name. Here ffmpeg's status is checked and its log kept for the one-line error.
    """
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    rate = str(Fraction(fps).limit_denominator())
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-vcodec", "rawvideo",
           "-s", f"{width}x{height}", "-pix_fmt", "rgb24", "-r", rate, "-i", "-", "-an", "-vcodec", "libx264",
           "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF), str(target)]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for frame in frames:
                proc.stdin.write(frame.tobytes())
        except BrokenPipeError:
            pass  # ffmpeg stopped early: its status and log say why
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            code = proc.wait()
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    if code != 0:
        if "No space left" in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        raise InputError(f"ffmpeg could not encode the video ({_ffmpeg_reason(text)})",
                         "check the frames and the output folder")


def gif_frame_ms(fps: float) -> int:
    """A GIF frame's duration: GIF counts in hundredths of a second, so a multiple of 10 ms."""
    return max(10, 10 * round(100 / fps))


def _frame_tag(frames: int, frame_ms: int) -> bytes:
    return FRAME_TAG + f" frames={frames} frame_ms={frame_ms}".encode()


def _encode_animated(target: Path, frames: np.ndarray, fps: float, ext: str) -> None:
    """GIF or lossless animated WebP through Pillow, tagged with the frame count and duration."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    if ext == ".gif":
        duration = gif_frame_ms(fps)
        images[0].save(target, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       comment=_frame_tag(len(images), duration))
    else:
        duration = max(1, round(1000 / fps))
        images[0].save(target, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       lossless=True, method=4, xmp=_frame_tag(len(images), duration))


def sheet_path(video: str | os.PathLike) -> Path:
    """``clip.mp4`` -> ``clip_frames.png``: the contact sheet beside the video it shows."""
    video = Path(video)
    return video.with_name(video.stem + SHEET_SUFFIX)


def contact_sheet(frames: Any, columns: int | None = None, pad: int = 2, fill: tuple[int, int, int] = (255, 255, 255)):
    """All frames in one PIL image, left to right then top to bottom (``columns`` default: up to 8)."""
    from PIL import Image

    data = frames_to_uint8(frames)
    if len(data) == 0:
        raise InputError("a contact sheet needs at least one frame", "generate at least one frame")
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


def write_video(
    path: str | os.PathLike,
    frames: Any,
    fps: float = 8.0,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    companions: Iterable[str] = (),
    sheet: bool = False,
    **sidecar_extra: Any,
) -> Path:
    """Write ``frames`` to ``path`` (.mp4, .gif or .webp); with ``settings``, also a JSON sidecar
    (``settings`` plus frames, fps, size and ``sidecar_extra``), and with ``sheet`` a contact sheet
    (:func:`sheet_path`, the settings in its PNG text chunk).

    Like every result, the video is published atomically under the first free name (``path``,
    ``stem-2``...; see :func:`attncraft.outputs.unique_output`; its sidecar and sheet count as
    companions) unless ``overwrite``; returns the path written.
    """
    from attncraft.outputs import save_png_with_settings, to_strict_json

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_SUFFIXES:
        raise InputError(f"cannot write a video as {ext or 'a file without extension'}", "use .mp4, .gif or .webp")
    fps = check_finite("fps", fps, 0, low_inclusive=False, example=8)
    data = frames_to_uint8(frames)
    if len(data) == 0:
        raise InputError("a video needs at least one frame", "generate at least one frame")
    if settings is not None:
        to_strict_json(dict(settings))  # a NaN is refused before anything is written
    side_suffix = sidecar_path(Path(ext)).name  # ".gif.json"
    stem = path.name[: -len(path.suffix)]
    companions = (side_suffix, *companions) + ((SHEET_SUFFIX,) if sheet else ())
    with unique_output(path.parent, stem, path.suffix, overwrite=overwrite, companions=companions) as out:
        if ext == ".mp4":
            _encode_mp4(out.tmp, _pad_to_macro_block(data), fps)
        else:
            _encode_animated(out.tmp, data, fps, ext)
    if settings is not None:
        write_sidecar(out.path, settings, frames=len(data), fps=fps, height=int(data.shape[1]), width=int(data.shape[2]),
                      **sidecar_extra)
    if sheet:
        save_png_with_settings(contact_sheet(data), sheet_path(out.path), dict(settings or {}), overwrite=True)
    return out.path


_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid")
_FORMAT_NAMES = {".mp4": "MP4", ".m4v": "MP4", ".mov": "MOV", ".gif": "GIF", ".webp": "WebP", ".webm": "WebM", ".avi": "AVI",
                 ".mkv": "MKV"}


def _unreadable(path: Path, kind: str, reason: str) -> InputError:
    return InputError(f"cannot read video {path}: it is not a valid {kind} ({reason})",
                      "pass an MP4, GIF or WebP file that plays (re-export it if it was cut short)")


def _shrink(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = frame.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return frame
    from PIL import Image

    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BOX))


def _check_pillow_header(path: Path, kind: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(12)
    ok = head[:6] in (b"GIF87a", b"GIF89a") if kind == "GIF" else head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if not ok:
        raise _unreadable(path, kind, f"no {kind} header")


def _pillow_frames(path: Path, kind: str, max_side: int | None) -> Iterator[np.ndarray]:
    """GIF / WebP frames; frames the encoder merged come back one per frame duration of the file's
    attncraft tag (:data:`FRAME_TAG`), a still merged into one image as often as the tag counts."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    _check_pillow_header(path, kind)
    try:
        with Image.open(path) as image:
            tag = image.info.get("comment" if kind == "GIF" else "xmp")
            match = _TAG_RE.match(tag) if isinstance(tag, bytes) else None
            count, frame_ms = (int(match[1]), int(match[2])) if match else (0, 0)
            stored = getattr(image, "n_frames", 1)
            for frame in ImageSequence.Iterator(image):
                rgb = _shrink(np.asarray(frame.convert("RGB")), max_side)  # loads the frame and its duration
                duration = frame.info.get("duration") or 0
                repeat = max(1, round(duration / frame_ms)) if frame_ms and duration else 1
                if count and stored == 1:  # everything merged into one still image
                    repeat = count
                for _ in range(repeat):
                    yield rgb
    except UnidentifiedImageError:
        raise _unreadable(path, kind, "damaged or truncated data") from None
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as exc:
        raise _unreadable(path, kind, f"damaged or truncated data: {short_reason(exc, 80)}") from None


def _check_mp4_header(path: Path, kind: str) -> None:
    if kind in ("MP4", "MOV"):
        with open(path, "rb") as handle:
            head = handle.read(12)
        if len(head) < 8 or head[4:8] not in _MP4_BOXES:
            raise _unreadable(path, kind, "no MP4 header")


def _ffmpeg_frames(path: Path, kind: str, max_side: int | None) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    _check_mp4_header(path, kind)
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        for raw in reader:
            yield _shrink(np.frombuffer(raw, np.uint8).reshape(height, width, 3), max_side)
    except (OSError, RuntimeError, StopIteration, ValueError) as exc:
        raise _unreadable(path, kind, _ffmpeg_reason(str(exc))) from None
    finally:
        reader.close()


def _kind(path: Path) -> str:
    return _FORMAT_NAMES.get(path.suffix.lower(), path.suffix.lstrip(".").upper() or "video")


def probe_video(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of a video's frames, from its header (nothing is decoded)."""
    path = check_input_file(path, "video")
    kind = _kind(path)
    if kind in ("GIF", "WebP"):
        from PIL import Image

        _check_pillow_header(path, kind)
        try:
            with Image.open(path) as image:
                return int(image.size[0]), int(image.size[1])
        except (OSError, SyntaxError, ValueError) as exc:
            raise _unreadable(path, kind, f"damaged or truncated data: {short_reason(exc, 80)}") from None
    import imageio_ffmpeg

    _check_mp4_header(path, kind)
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        width, height = next(reader)["size"]
    except (OSError, RuntimeError, StopIteration, ValueError, KeyError) as exc:
        raise _unreadable(path, kind, _ffmpeg_reason(str(exc))) from None
    finally:
        reader.close()
    return int(width), int(height)


def read_video(path: str | os.PathLike, max_side: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Read all frames of an MP4, GIF or WebP as ``(F, H, W, 3)`` uint8 (MP4 padding is not removed).

    A file that is not a readable video gives one line naming it and the reason (no ffmpeg log).
    ``max_side``: frames larger than that are downscaled (area average) while they are decoded, so
    memory stays bounded by the reduced size; ``max_frames``: refuse longer videos.
    """
    path = check_input_file(path, "video")
    kind = _kind(path)
    frames = _pillow_frames(path, kind, max_side) if kind in ("GIF", "WebP") else _ffmpeg_frames(path, kind, max_side)
    out = []
    for frame in frames:
        out.append(frame)
        if max_frames is not None and len(out) > max_frames:
            frames.close()
            raise InputError(f"the video {path} has more than {max_frames} frames", f"pass a clip of at most {max_frames} frames")
    if not out:
        raise _unreadable(path, kind, "it holds no frames")
    return np.stack(out)
