"""Writing results safely and reproducibly.

* Every file is written to a temporary name in the destination folder and then renamed over the
  final name (:func:`atomic_path`), so an interrupted run never leaves a half-written or corrupted
  file where a good one used to be.
* PNG images carry their generation settings as text chunks (:func:`save_png_with_settings`), and
  video and mesh outputs carry them in a JSON sidecar (:func:`write_sidecar`), so any result can be
  reproduced from its file alone (:func:`read_png_settings`, :func:`read_sidecar`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

SETTINGS_KEY = "attncraft"
"""PNG text-chunk key (and sidecar top-level key) that holds the JSON settings."""


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` only if the block succeeds.

    The temporary file keeps ``final``'s extension (``suffix``), because several writers (PIL,
    imageio, trimesh) choose the format from it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=suffix or final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give results the permissions an ordinary file would get
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def settings_json(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), sort_keys=True, default=_json_default)


def save_png_with_settings(image: Image.Image, path: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """Save ``image`` as PNG at ``path`` (atomically) with ``settings`` in an ``attncraft`` text chunk.

    A second chunk ``parameters`` holds a human-readable ``key: value`` summary, as other
    diffusion tools do, for viewers that show text chunks.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text(SETTINGS_KEY, settings_json(settings))
    info.add_text("parameters", ", ".join(f"{k}: {v}" for k, v in sorted(settings.items())))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def read_png_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Return the settings stored by :func:`save_png_with_settings` (``{}`` if there are none)."""
    with Image.open(path) as im:
        text = getattr(im, "text", {}) or {}
        raw = text.get(SETTINGS_KEY)
    return json.loads(raw) if raw else {}


def sidecar_path(path: str | os.PathLike) -> Path:
    """``result.mp4`` -> ``result.mp4.json``: the sidecar sits beside the file it describes."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike, settings: Mapping[str, Any], **extra: Any) -> Path:
    """Write the JSON sidecar of ``path`` atomically and return its path."""
    payload = {SETTINGS_KEY: dict(settings), **extra}
    side = sidecar_path(path)
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    return side


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Return the settings stored in ``path``'s sidecar."""
    return json.loads(sidecar_path(path).read_text())[SETTINGS_KEY]
