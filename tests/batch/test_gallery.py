"""``attncraft batch report``: the HTML gallery, and what headless Chromium shows of it."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import fake_jobs  # noqa: F401 - registers the "solid" job type
from attncraft.batch.manifest import load_manifest
from attncraft.batch.runner import run_batch
from batch_helpers import write_jsonl
from cli_runner import run_cli

MODULES = ("fake_jobs",)
FAILED_BORDER = (198, 40, 40)  # the failed card's border, #c62828


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def make_results(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"command": "solid", "label": "red <one>", "color": "red"},
        {"command": "solid", "label": "green", "color": "green"},
        {"command": "solid", "label": "blue", "color": "blue", "size": 400},
        {"command": "solid", "label": "anim", "color": "yellow", "media": "gif"},
        {"command": "solid", "label": "mesh-like", "media": "folder"},
        {"command": "solid", "label": "broken", "fail": True, "size": 16},
    ])
    out = tmp_path / "out"
    run_batch(load_manifest(manifest, MODULES), out, extra_modules=MODULES)
    return out, load_manifest(manifest, MODULES)


def test_report_shows_results_settings_metrics_and_failures(tmp_path, capsys):
    out, jobs = make_results(tmp_path)
    code, stdout, err = run_cli(["batch", "report", out], capsys)
    assert code == 0, err
    page = out / "index.html"
    assert stdout.strip() == str(page)
    parser = Tags()
    parser.feed(page.read_text())
    text = " ".join(" ".join(parser.text).split())
    sources = [a["src"] for tag, a in parser.tags if tag == "img"]
    for src in sources:
        assert (out / src).is_file(), src
    assert f"{jobs[0].stem}.png" in sources and f"{jobs[3].stem}.gif" in sources
    assert f"{jobs[4].stem}/turntable.gif" in sources
    assert f"thumbs/{jobs[2].stem}.jpg" in sources  # a 400 px image gets a 256 px thumbnail
    assert max(Image.open(out / f"thumbs/{jobs[2].stem}.jpg").size) == 256
    assert any(a.get("href") == f"{jobs[4].stem}/mesh.glb" for tag, a in parser.tags if tag == "a")
    assert "5 done, 1 failed" in text and "FAILED: broken" in text
    assert "RuntimeError: job broken was asked to fail <b>" in text  # escaped in the page, shown as text
    assert "red <one>" in text and "brightness" in text
    code, _, err = run_cli(["batch", "report", tmp_path], capsys)
    assert code == 2 and "holds no batch results" in err


def _chromium_problem() -> str | None:
    if shutil.which("chromium") is None:
        why = os.environ.get("ATTNCRAFT_CHROMIUM_MISSING", "")
        return ("Debian's chromium is not installed here (.ci/run installs it with apt-get"
                + (f"; it failed: {why}" if why else "") + ")")
    return None


def test_gallery_renders_in_headless_chromium(tmp_path):
    problem = _chromium_problem()
    if problem:
        pytest.skip(problem)
    out, _jobs = make_results(tmp_path)
    from attncraft.batch.gallery import write_report

    page = write_report(out)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,1000",
               f"--screenshot={shot}", page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def area(rgb, tolerance=6):
        return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())

    # each result's colour fills its 216 px thumbnail box; the failed job's red border is drawn
    for name, rgb in fake_jobs.COLORS.items():
        assert area(rgb) > 150 * 150, name
    assert area(FAILED_BORDER, tolerance=10) > 2000
