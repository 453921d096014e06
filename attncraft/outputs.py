"""Writing results safely and reproducibly; every command writes through these helpers.

* **Nothing half-written.** Every file is written to a hidden temporary name in its destination
  folder and only then renamed or linked to its final name (:func:`atomic_path`,
  :func:`unique_output`), so an interrupted run never leaves a truncated file under a result's
  name, and never damages the file that was there. Temporary names carry the host and process id
  (``.NAME.attncraft-tmp-HOST-PID-XXXX.ext``), so a later run removes those of dead processes
  (:func:`clean_stale_temporaries`, called by :func:`prepare_output_dir`).
* **Nothing replaced unless asked.** :func:`unique_output` publishes a finished file under the first
  free name ``stem``, ``stem-2``, ``stem-3``... with a hard link, which fails if the name exists, so
  two processes writing into one folder at the same instant can never take the same name (a check
  followed by a rename could). ``overwrite=True`` replaces instead, atomically. A result made of
  several files (an image, its mask, its JSON) reserves its primary file this way and names the
  others after it (``companions``); whole result folders are reserved with :func:`reserve_dir`.
* **Problems found before the work.** :func:`prepare_output_dir` refuses an output path that is a
  file, cannot be created or written, or sits on a full disk, before any model is loaded; a disk
  that fills up while writing gives one line naming the file, and the temporary is removed.
* **Settings travel with the result.** PNG images carry their generation settings as text chunks
  (:func:`save_png_with_settings`), video and mesh outputs in a JSON sidecar
  (:func:`write_sidecar`); both are strict JSON (a NaN or infinity is refused, naming the setting),
  so any result reproduces from its file alone (:func:`read_png_settings`, :func:`read_sidecar`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from attncraft.errors import InputError

SETTINGS_KEY = "attncraft"
"""PNG text-chunk key (and sidecar top-level key) that holds the JSON settings."""

TMP_MARK = "attncraft-tmp-"
MIN_FREE_BYTES = 16 * 1024 * 1024
"""Free space an output folder must have before a command starts (results are small)."""
STALE_FOREIGN_SECONDS = 24 * 3600
"""Temporaries of another host are removed only once they are this old (its process may be alive)."""

_TMP_RE = re.compile(re.escape(TMP_MARK) + r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:32] or "host"


def _temporary(folder: Path, stem: str, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.{TMP_MARK}{_host_tag()}-{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


def _give_ordinary_permissions(path: Path) -> None:
    # mkstemp creates 0600 files; give results the permissions an ordinary file would get
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_error(exc: OSError, final: Path) -> InputError | None:
    """The one-line error for a write that failed for a reason the user can fix, else None."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputError(f"no space left on the device while writing {final}", "free some space or pass another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"cannot write {final}: {os.strerror(exc.errno)}", "pass an --out folder you can write to")
    return None


@contextlib.contextmanager
def _writing(folder: Path, stem: str, suffix: str, final_for_errors: Path) -> Iterator[Path]:
    """A temporary file in ``folder``, removed if the block fails; OSErrors become one-line errors."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(folder, stem, suffix)
    except OSError as exc:
        raise (_write_error(exc, final_for_errors) or exc) from exc
    try:
        yield tmp
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        problem = _write_error(exc, final_for_errors)
        if problem is not None:
            raise problem from exc
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` only if the block succeeds.

    This *replaces* ``final`` if it exists: use it for files whose name is already reserved (a
    companion of a result published with :func:`unique_output`, a file inside a folder from
    :func:`reserve_dir`, or with ``--overwrite``). The temporary file keeps ``final``'s extension
    (``suffix``), because several writers (PIL, imageio, trimesh) choose the format from it.
    """
    final = Path(final)
    with _writing(final.parent, final.stem, suffix or final.suffix, final) as tmp:
        yield tmp
        _give_ordinary_permissions(tmp)
        os.replace(tmp, final)


@dataclass
class Output:
    """A result being written by :func:`unique_output`: write to :attr:`tmp`; after the block,
    :attr:`path` is the name it was published under."""

    tmp: Path
    path: Path | None = None


def _name_taken(folder: Path, name: str, suffix: str, companions: Iterable[str]) -> bool:
    return any((folder / f"{name}{ext}").exists() for ext in (suffix, *companions))


def _publish(tmp: Path, folder: Path, stem: str, suffix: str, companions: tuple[str, ...]) -> Path:
    """Give the finished ``tmp`` the first free name; atomic against concurrent writers."""
    n = 1
    while True:
        name = stem if n == 1 else f"{stem}-{n}"
        n += 1
        if _name_taken(folder, name, suffix, companions):
            continue
        final = folder / f"{name}{suffix}"
        try:
            os.link(tmp, final)  # fails if the name exists: the reservation and the publication in one step
        except FileExistsError:
            continue
        except OSError:
            # a file system without hard links: reserve the name by exclusive creation, then rename
            try:
                fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            os.replace(tmp, final)
            return final
        tmp.unlink()
        return final


@contextlib.contextmanager
def unique_output(
    folder: str | os.PathLike,
    stem: str,
    suffix: str,
    overwrite: bool = False,
    companions: Iterable[str] = (),
) -> Iterator[Output]:
    """Write a result to ``output.tmp``; when the block succeeds it becomes ``folder/stem+suffix``.

    Without ``overwrite`` an existing result is never replaced: the file is published under the
    first free name ``stem``, ``stem-2``, ... (a name counts as taken if ``stem+suffix`` or any
    ``stem+companion`` exists, e.g. ``companions=(".json", "_mask.png")``), atomically even when
    several processes write into one folder at once. With ``overwrite`` the file replaces
    ``stem+suffix`` atomically. Either way ``output.path`` is the final name after the block.
    """
    folder = Path(folder)
    first = folder / f"{stem}{suffix}"
    with _writing(folder, stem, suffix, first) as tmp:
        output = Output(tmp=tmp)
        yield output
        _give_ordinary_permissions(tmp)
        if overwrite:
            os.replace(tmp, first)
            output.path = first
        else:
            output.path = _publish(tmp, folder, stem, suffix, tuple(companions))


def reserve_dir(parent: str | os.PathLike, name: str, overwrite: bool = False) -> Path:
    """Create and return the result folder ``parent/name`` (``name-2``, ``name-3``... if taken).

    ``mkdir`` is atomic, so concurrent runs never share a folder. With ``overwrite`` an existing
    folder is reused (its files are then replaced one by one, each atomically; temporaries that
    killed runs left in it are removed).
    """
    parent = prepare_output_dir(parent)
    if overwrite:
        path = parent / name
        if path.exists() and not path.is_dir():
            raise InputError(f"{path} exists and is not a folder", "remove it or pass another --out")
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise (_write_error(exc, path) or exc) from exc
        clean_stale_temporaries(path)
        return path
    n = 1
    while True:
        path = parent / (name if n == 1 else f"{name}-{n}")
        n += 1
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise (_write_error(exc, path) or exc) from exc
        return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries left in ``folder`` by killed runs; returns what was removed.

    A temporary of this host is stale when its process is gone; one of another host (a shared
    folder on a cluster) when it is older than a day. Other files are never touched.
    """
    folder = Path(folder)
    removed: list[Path] = []
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or TMP_MARK not in entry.name:
            continue
        match = _TMP_RE.search(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if match["host"] == host:
            stale = not _process_alive(int(match["pid"]))
        else:
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_FOREIGN_SECONDS
            except OSError:
                stale = False
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def prepare_output_dir(path: str | os.PathLike, what: str = "--out", min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check an output folder before any work: create it, and refuse a file, an unwritable folder or
    a full disk with one line. Also removes temporaries that killed runs left there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder", f"pass a folder to {what} (it is created if needed)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"cannot create the output folder {path}: a part of the path is a file", f"pass another {what}") from None
    except OSError as exc:
        raise InputError(f"cannot create the output folder {path}: {exc.strerror or exc}", f"pass a folder you can write to as {what}") from None
    try:
        probe = _temporary(path, "write-check", ".tmp")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"attncraft")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to the output folder {path}: {exc.strerror or exc}", f"pass a folder you can write to as {what}") from None
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = None
    if free is not None and free < min_free_bytes:
        raise InputError(
            f"the output folder {path} has only {free / 1e6:.1f} MB free",
            f"free some space or pass another {what}",
        )
    clean_stale_temporaries(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _non_finite(value: Any, where: str = "") -> str | None:
    """The dotted key of the first NaN/infinity inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{where}[{index}]")
            if found:
                return found
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _non_finite(value.tolist(), where)
    return None


def to_strict_json(payload: Any, **dumps_kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and infinity (invalid JSON), naming the setting that holds one."""
    try:
        return json.dumps(payload, default=_json_default, allow_nan=False, **dumps_kwargs)
    except ValueError as exc:
        where = _non_finite(payload)
        if where is None:
            raise
        raise InputError(f"the setting {where} is not a finite number", "pass finite values (NaN and infinity are not results)") from exc


def settings_json(settings: Mapping[str, Any]) -> str:
    return to_strict_json(dict(settings), sort_keys=True)


def _png_info(settings: Mapping[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(SETTINGS_KEY, settings_json(settings))
    info.add_text("parameters", ", ".join(f"{k}: {v}" for k, v in sorted(settings.items())))
    return info


def save_png_with_settings(
    image: Image.Image,
    path: str | os.PathLike,
    settings: Mapping[str, Any],
    overwrite: bool = False,
    companions: Iterable[str] = (),
) -> Path:
    """Save ``image`` as PNG with ``settings`` in an ``attncraft`` text chunk; returns the path written.

    By default an existing file is never replaced: the image is published under the first free
    name derived from ``path`` (:func:`unique_output`). With ``overwrite`` (``--overwrite``, or a
    name already reserved, e.g. inside a folder from :func:`reserve_dir`) ``path`` is replaced
    atomically.
    A second chunk ``parameters`` holds a human-readable ``key: value`` summary, as other
    diffusion tools do, for viewers that show text chunks.
    """
    path = Path(path)
    info = _png_info(settings)  # before any file is touched: settings with a NaN are refused first
    with unique_output(path.parent, path.stem, path.suffix or ".png", overwrite=overwrite, companions=companions) as out:
        image.save(out.tmp, format="PNG", pnginfo=info)
    return out.path


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
    """Write the JSON sidecar of ``path`` (strict JSON) atomically and return its path.

    The sidecar belongs to ``path``, whose name the caller has already reserved, so it is replaced.
    """
    payload = {SETTINGS_KEY: dict(settings), **extra}
    text = to_strict_json(payload, indent=2, sort_keys=True) + "\n"
    side = sidecar_path(path)
    with atomic_path(side) as tmp:
        tmp.write_text(text)
    return side


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Return the settings stored in ``path``'s sidecar."""
    return json.loads(sidecar_path(path).read_text())[SETTINGS_KEY]
