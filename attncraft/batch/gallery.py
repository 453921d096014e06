"""``attncraft batch report DIR``: a static HTML gallery of a batch output folder.

``DIR/index.html`` (written atomically; open it in any browser, no server needed) shows the failed
jobs first, with their errors and settings, then one card per finished job: its image (a thumbnail
under ``DIR/thumbs/`` when it is larger than :data:`THUMB_SIDE`), video (MP4/WebM as a looping
``<video>``, GIF as an image) or mesh result (its turntable and contact sheet, links to the mesh
files), the options it was given, the settings it resolved, and its metrics where it has them
(reader scores with ``--score``, a mesh's CLIP score). Everything comes from the status file and
the job sidecars, so the page can be rebuilt at any time, also while a batch is running.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from attncraft.batch.status import StatusLog
from attncraft.errors import InputError
from attncraft.outputs import atomic_path

THUMB_SIDE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm")
ANIMATION_SUFFIXES = (".gif",)
MESH_SUFFIXES = (".glb", ".ply", ".obj")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; background: #f4f4f6; color: #1d1d22; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 18px; margin: 24px 0 8px 0; }
.summary { color: #55555f; margin-bottom: 16px; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.card { background: #ffffff; border: 1px solid #d5d5dc; border-radius: 8px; padding: 10px; width: 236px; }
.card.failed { background: #fdecec; border: 3px solid #c62828; width: 480px; }
.media { display: flex; flex-wrap: wrap; gap: 4px; }
.media img, .media video { width: 216px; height: 216px; object-fit: contain; image-rendering: pixelated; background: #e9e9ee; }
.media.many img { width: 106px; height: 106px; }
.title { font-weight: 600; margin: 6px 0 2px 0; word-break: break-word; }
.meta { font-size: 12px; color: #55555f; word-break: break-all; }
.error { color: #8e0000; font-family: monospace; font-size: 13px; white-space: pre-wrap; margin: 6px 0; }
table { border-collapse: collapse; font-size: 12px; margin-top: 4px; }
td { border-top: 1px solid #ececf0; padding: 1px 6px 1px 0; vertical-align: top; word-break: break-all; }
details { font-size: 12px; margin-top: 4px; } summary { cursor: pointer; color: #3a3a9a; }
a { color: #3a3a9a; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(rel: str) -> str:
    return quote(rel, safe="/")


def _table(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>" for k, v in sorted(values.items()))
    return f"<table>{rows}</table>" if rows else ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _thumbnail(out_dir: Path, rel: str) -> str:
    """``rel`` itself if it is small, else a thumbnail under ``thumbs/`` (made once, atomically)."""
    from PIL import Image

    source = out_dir / rel
    try:
        with Image.open(source) as im:
            if max(im.size) <= THUMB_SIDE:
                return rel
            thumb_rel = f"thumbs/{Path(rel).with_suffix('.jpg').as_posix()}"
            target = out_dir / thumb_rel
            if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
                return thumb_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            small = im.convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE))
            with atomic_path(target) as tmp:
                small.save(tmp, format="JPEG", quality=88)
            return thumb_rel
    except OSError:
        return rel


def _media_files(out_dir: Path, files: list[str]) -> list[str]:
    """The files a card shows, folders (mesh results) opened."""
    shown: list[str] = []
    for rel in files:
        path = out_dir / rel
        if path.is_dir():
            shown.extend(sorted(p.relative_to(out_dir).as_posix() for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        else:
            shown.append(rel)
    return shown


def _media(out_dir: Path, files: list[str]) -> tuple[str, str]:
    """(media HTML, links HTML) of a job's files."""
    pieces, links = [], []
    for rel in files:
        suffix = Path(rel).suffix.lower()
        name = Path(rel).name
        if suffix in IMAGE_SUFFIXES:
            pieces.append(f'<a href="{_href(rel)}"><img src="{_href(_thumbnail(out_dir, rel))}" alt="{_e(name)}" loading="lazy"></a>')
        elif suffix in ANIMATION_SUFFIXES:
            pieces.append(f'<a href="{_href(rel)}"><img src="{_href(rel)}" alt="{_e(name)}"></a>')
        elif suffix in VIDEO_SUFFIXES:
            pieces.append(f'<video src="{_href(rel)}" autoplay loop muted playsinline controls></video>')
        elif suffix in MESH_SUFFIXES or suffix == ".json":
            links.append(f'<a href="{_href(rel)}">{_e(suffix.lstrip("."))}</a>')
    many = " many" if len(pieces) > 1 else ""
    return (f'<div class="media{many}">{"".join(pieces)}</div>' if pieces else ""), " ".join(links)


def _settings_details(record: dict[str, Any], sidecar: dict[str, Any] | None) -> str:
    parts = [f"<details><summary>options</summary>{_table(record.get('options', {})) or 'defaults only'}</details>"]
    if sidecar and sidecar.get("attncraft"):
        parts.append(f"<details><summary>settings</summary>{_table(sidecar['attncraft'])}</details>")
    return "".join(parts)


def _title(record: dict[str, Any]) -> str:
    return str(record.get("title") or record.get("stem") or record.get("id", "")[:12])


def _card(out_dir: Path, record: dict[str, Any]) -> str:
    sidecar = None
    side_path = out_dir / f"{record.get('stem', '')}.json"
    try:
        sidecar = json.loads(side_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sidecar = None
    files = [f for f in record.get("files", []) if f != side_path.name]
    media, links = _media(out_dir, _media_files(out_dir, files))
    metrics = (sidecar or {}).get("metrics") or {}
    seconds = record.get("seconds")
    meta = f"{_e(record.get('command', ''))} &middot; {_e(record.get('source', ''))}"
    if isinstance(seconds, (int, float)):
        meta += f" &middot; {seconds:.2f} s"
    return (f'<div class="card done" data-job="{_e(record.get("id", ""))}">{media}'
            f'<div class="title">{_e(_title(record))}</div><div class="meta">{meta}</div>'
            f'{"<div class=meta>metrics</div>" + _table(metrics) if metrics else ""}'
            f'<div class="meta">{links}</div>{_settings_details(record, sidecar)}</div>')


def _failed_card(record: dict[str, Any]) -> str:
    detail = record.get("detail")
    trace = f"<details><summary>traceback</summary><div class='error'>{_e(detail)}</div></details>" if detail else ""
    return (f'<div class="card failed" data-job="{_e(record.get("id", ""))}">'
            f'<div class="title">FAILED: {_e(_title(record))}</div>'
            f'<div class="meta">{_e(record.get("command", ""))} &middot; {_e(record.get("source", ""))}</div>'
            f'<div class="error">{_e(record.get("error", ""))}</div>{trace}{_settings_details(record, None)}</div>')


def write_report(out: str | Path, title: str | None = None) -> Path:
    """Write ``out/index.html`` from the folder's status file and sidecars; returns its path."""
    out_dir = Path(out)
    status = StatusLog(out_dir)
    if not status.path.is_file():
        raise InputError(f"{out_dir} holds no batch results (no {status.path.name})",
                         "pass the --out folder of an 'attncraft batch run'")
    records = list(status.read().values())
    done = [r for r in records if r.get("state") == "done"]
    failed = [r for r in records if r.get("state") == "failed"]
    done.sort(key=lambda r: (r.get("source", ""), r.get("stem", "")))
    failed.sort(key=lambda r: r.get("source", ""))
    name = title or f"attncraft batch: {out_dir.resolve().name}"
    body = [f"<h1>{_e(name)}</h1>",
            f'<div class="summary">{len(done)} done, {len(failed)} failed &middot; status: '
            f'<a href="{_href(status.path.name)}">{_e(status.path.name)}</a></div>']
    if failed:
        body.append(f'<h2>Failed jobs ({len(failed)})</h2><div class="grid">{"".join(_failed_card(r) for r in failed)}</div>')
    if done:
        body.append(f'<h2>Results ({len(done)})</h2><div class="grid">{"".join(_card(out_dir, r) for r in done)}</div>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(name)}</title>'
            f'<style>{_CSS}</style></head><body>{"".join(body)}</body></html>\n')
    target = out_dir / "index.html"
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
